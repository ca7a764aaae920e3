//! Engagement tracking in HTML bodies, rewritten with lol_html (a streaming HTML rewriter): each
//! http(s) link goes through a signed click redirect, and an open pixel is appended to the
//! body where it does not make an image-only mail. Links to this engine itself (unsubscribe,
//! preferences) are left alone.

use lol_html::html_content::ContentType;
use lol_html::{RewriteStrSettings, element, rewrite_str};
use std::cell::Cell;
use std::rc::Rc;

/// The open pixel, and the text the HTML needs for it: it goes only where the HTML has an image
/// of its own or at least `min_text` characters of text (0: always), since spam filters score a
/// short mail whose only image is the pixel as image-only.
pub struct Pixel<'a> {
    pub url: &'a str,
    pub min_text: usize,
}

/// What the pixel's placement depends on, counted in the same pass that rewrites the links.
#[derive(Default)]
struct Seen {
    images: Cell<bool>,
    text: Cell<usize>,
    /// Open `<script>`, `<style>` and `<head>` elements: their text is no content.
    hidden: Cell<usize>,
    placed: Cell<bool>,
}

impl Seen {
    fn fits(&self, min_text: usize) -> bool {
        min_text == 0 || self.images.get() || self.text.get() >= min_text
    }
}

/// `click(url)` gives the tracked URL for a destination; `pixel` the open pixel, placed before
/// `</body>` (or at the end of a fragment) if the HTML has room for it.
pub fn rewrite_html(
    html: &str,
    own_base: &str,
    click: Option<&dyn Fn(&str) -> String>,
    pixel: Option<Pixel>,
) -> Result<String, lol_html::errors::RewritingError> {
    let pixel = pixel.map(|p| {
        let tag = format!(
            r#"<img src="{}" width="1" height="1" alt="" style="display:block;border:0;width:1px;height:1px">"#,
            p.url
        );
        (tag, p.min_text)
    });
    // Shared with end-tag handlers, which must own what they hold.
    let seen = Rc::new(Seen::default());
    let mut handlers = vec![];
    let mut document = vec![];
    if let Some(click) = click {
        handlers.push(element!("a[href]", move |el| {
            let href = el.get_attribute("href").unwrap_or_default();
            // Attribute text is HTML: `&amp;` in a query string stands for `&`.
            let target = href.trim().replace("&amp;", "&");
            let lower = target.to_ascii_lowercase();
            if (lower.starts_with("http://") || lower.starts_with("https://")) && !target.starts_with(own_base) {
                el.set_attribute("href", &click(&target))?;
            }
            Ok(())
        }));
    }
    if let Some((tag, min_text)) = &pixel {
        handlers.push(element!("img", |_| {
            seen.images.set(true);
            Ok(())
        }));
        handlers.push(element!("body", |el| {
            // A `<head>` left open (its end tag is optional) ends where the body starts.
            seen.hidden.set(0);
            if let Some(end) = el.end_tag_handlers() {
                let (seen, tag, min_text) = (seen.clone(), tag.clone(), *min_text);
                let place: lol_html::EndTagHandler<'static> = Box::new(move |end| {
                    if seen.fits(min_text) {
                        end.before(&tag, ContentType::Html);
                        seen.placed.set(true);
                    }
                    seen.hidden.set(usize::MAX);
                    Ok(())
                });
                end.push(place);
            }
            Ok(())
        }));
        handlers.push(element!("script, style, head", |el| {
            seen.hidden.set(seen.hidden.get().saturating_add(1));
            if let Some(end) = el.end_tag_handlers() {
                let seen = seen.clone();
                let close: lol_html::EndTagHandler<'static> = Box::new(move |_| {
                    seen.hidden.set(seen.hidden.get().saturating_sub(1));
                    Ok(())
                });
                end.push(close);
            }
            Ok(())
        }));
        document.push(lol_html::doc_text!(|t| {
            if seen.hidden.get() == 0 {
                let words = t.as_str().split_whitespace().map(|w| w.chars().count() + 1);
                seen.text.set(seen.text.get() + words.sum::<usize>());
            }
            Ok(())
        }));
    }
    let mut out = rewrite_str(
        html,
        RewriteStrSettings {
            element_content_handlers: handlers,
            document_content_handlers: document,
            ..RewriteStrSettings::new()
        },
    )?;
    if let Some((tag, min_text)) = &pixel
        && !seen.placed.get()
        && seen.fits(*min_text)
    {
        // A fragment without `</body>`: the pixel goes at the end.
        out.push_str(tag);
    }
    Ok(out)
}

/// A text body with its http(s) links (outside `own_base`) through `click`.
pub fn rewrite_text(text: &str, own_base: &str, click: &dyn Fn(&str) -> String) -> String {
    let mut finder = linkify::LinkFinder::new();
    finder.kinds(&[linkify::LinkKind::Url]);
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for link in finder.links(text) {
        let url = link.as_str();
        let lower = url.to_ascii_lowercase();
        if (lower.starts_with("http://") || lower.starts_with("https://")) && !url.starts_with(own_base) {
            out.push_str(&text[last..link.start()]);
            out.push_str(&click(url));
            last = link.end();
        }
    }
    out.push_str(&text[last..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether the pixel went into `html` with `min_text`.
    fn pixel_fits(html: &str, min_text: usize) -> bool {
        let pixel = Pixel { url: "P", min_text };
        rewrite_html(html, "x", None, Some(pixel))
            .unwrap()
            .contains(r#"<img src="P""#)
    }

    #[test]
    fn the_pixel_goes_where_it_does_not_make_an_image_only_mail() {
        assert!(!pixel_fits("<p>Short.</p>", 400));
        assert!(pixel_fits("<p>Short.</p><img src=\"logo.png\">", 400));
        assert!(pixel_fits(&format!("<p>{}</p>", "word ".repeat(100)), 400));
        // Text in <style> is no content.
        assert!(!pixel_fits(
            &format!("<style>{}</style><p>Hi</p>", "x ".repeat(400)),
            400
        ));
        assert!(pixel_fits("<p>Short.</p>", 0));
        let open_head = format!("<html><head><title>t</title><body><p>{}</p>", "word ".repeat(100));
        assert!(pixel_fits(&open_head, 400));
        // With `</body>`, the pixel goes before it, once.
        let doc = format!("<html><body><p>{}</p></body></html>", "word ".repeat(100));
        let out = rewrite_html(
            &doc,
            "x",
            None,
            Some(Pixel {
                url: "P",
                min_text: 400,
            }),
        )
        .unwrap();
        assert_eq!(out.matches(r#"<img src="P""#).count(), 1, "{out}");
        assert!(
            out.find(r#"<img src="P""#).unwrap() < out.find("</body>").unwrap(),
            "{out}"
        );
    }

    #[test]
    fn links_in_text_bodies_are_tracked_except_our_own() {
        let click = |u: &str| format!("https://me.example/c/{}", u.len());
        let out = rewrite_text(
            "See https://shop.example.com/cart?a=1 (or https://me.example/u/tok), mail help@example.com.",
            "https://me.example",
            &click,
        );
        assert_eq!(
            out,
            "See https://me.example/c/33 (or https://me.example/u/tok), mail help@example.com."
        );
    }

    #[test]
    fn links_are_wrapped_own_and_non_http_links_kept_and_the_pixel_lands_in_the_body() {
        let html = r#"<html><body><p>Hi <a href="https://shop.example.com/cart?a=1&amp;b=2">cart</a>
            <a href="mailto:help@example.com">help</a> <a href="https://me.example/u/tok">unsubscribe</a></p></body></html>"#;
        let click = |u: &str| format!("https://me.example/c/{}", u.len());
        let pixel = Pixel {
            url: "https://me.example/o/t",
            min_text: 0,
        };
        let out = rewrite_html(html, "https://me.example", Some(&click), Some(pixel)).unwrap();
        // "https://shop.example.com/cart?a=1&b=2" is 37 characters once `&amp;` is decoded.
        assert!(out.contains(r#"href="https://me.example/c/37""#), "{out}");
        assert!(out.contains(r#"href="mailto:help@example.com""#), "{out}");
        assert!(out.contains(r#"href="https://me.example/u/tok""#), "{out}");
        let pixel = out.find(r#"<img src="https://me.example/o/t""#).expect("pixel");
        assert!(pixel < out.find("</body>").unwrap(), "{out}");

        let fragment = rewrite_html("<p>no body</p>", "x", None, Some(Pixel { url: "P", min_text: 0 })).unwrap();
        assert!(fragment.starts_with("<p>no body</p><img src=\"P\""), "{fragment}");
    }
}
