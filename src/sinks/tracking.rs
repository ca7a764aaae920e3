//! Engagement tracking in HTML bodies, rewritten with lol_html (a streaming HTML rewriter): each
//! http(s) link goes through a signed click redirect, and an open pixel is appended to the
//! body. Links to this engine itself (unsubscribe, preferences) are left alone.

use lol_html::html_content::ContentType;
use lol_html::{RewriteStrSettings, element, rewrite_str};
use std::cell::Cell;

/// `click(url)` gives the tracked URL for a destination; `pixel` the open pixel's URL.
pub fn rewrite_html(
    html: &str,
    own_base: &str,
    click: Option<&dyn Fn(&str) -> String>,
    pixel: Option<&str>,
) -> Result<String, lol_html::errors::RewritingError> {
    let body_seen = Cell::new(false);
    let pixel_tag = pixel.map(|p| {
        format!(r#"<img src="{p}" width="1" height="1" alt="" style="display:block;border:0;width:1px;height:1px">"#)
    });
    let mut handlers = vec![];
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
    if let Some(tag) = &pixel_tag {
        handlers.push(element!("body", |el| {
            body_seen.set(true);
            el.append(tag, ContentType::Html);
            Ok(())
        }));
    }
    let mut out = rewrite_str(
        html,
        RewriteStrSettings {
            element_content_handlers: handlers,
            ..RewriteStrSettings::new()
        },
    )?;
    if let (Some(tag), false) = (&pixel_tag, body_seen.get()) {
        // A fragment without <body>: the pixel goes at the end.
        out.push_str(tag);
    }
    Ok(out)
}

/// Whether an open pixel may go into `html` without making it an image-only mail: it has an
/// image of its own, or at least `min_text` characters of text.
pub fn pixel_fits(html: &str, min_text: usize) -> bool {
    if min_text == 0 {
        return true;
    }
    let images = Cell::new(false);
    let text = Cell::new(0usize);
    // Open <script>, <style> and <head> elements (shared with their end-tag handlers).
    let hidden = std::rc::Rc::new(Cell::new(0usize));
    let counted = lol_html::rewrite_str(
        html,
        RewriteStrSettings {
            element_content_handlers: vec![
                element!("img", |_| {
                    images.set(true);
                    Ok(())
                }),
                // A `<head>` left open (its end tag is optional) ends where the body starts.
                element!("body", |_| {
                    hidden.set(0);
                    Ok(())
                }),
                element!("script, style, head", |el| {
                    hidden.set(hidden.get() + 1);
                    if let Some(handlers) = el.end_tag_handlers() {
                        let hidden = hidden.clone();
                        let end: lol_html::EndTagHandler<'static> = Box::new(move |_| {
                            hidden.set(hidden.get() - 1);
                            Ok(())
                        });
                        handlers.push(end);
                    }
                    Ok(())
                }),
            ],
            document_content_handlers: vec![lol_html::doc_text!(|t| {
                if hidden.get() == 0 {
                    text.set(
                        text.get()
                            + t.as_str()
                                .split_whitespace()
                                .map(|w| w.chars().count() + 1)
                                .sum::<usize>(),
                    );
                }
                Ok(())
            })],
            ..RewriteStrSettings::new()
        },
    );
    counted.is_ok() && (images.get() || text.get() >= min_text)
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
        let out = rewrite_html(html, "https://me.example", Some(&click), Some("https://me.example/o/t")).unwrap();
        // "https://shop.example.com/cart?a=1&b=2" is 37 characters once `&amp;` is decoded.
        assert!(out.contains(r#"href="https://me.example/c/37""#), "{out}");
        assert!(out.contains(r#"href="mailto:help@example.com""#), "{out}");
        assert!(out.contains(r#"href="https://me.example/u/tok""#), "{out}");
        let pixel = out.find(r#"<img src="https://me.example/o/t""#).expect("pixel");
        assert!(pixel < out.find("</body>").unwrap(), "{out}");

        let fragment = rewrite_html("<p>no body</p>", "x", None, Some("P")).unwrap();
        assert!(fragment.starts_with("<p>no body</p><img src=\"P\""), "{fragment}");
    }
}
