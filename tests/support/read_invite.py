"""Reads the calendar invite of an .eml file with the `icalendar` package (PyPI) and prints what
a calendar client would take from it, as JSON: the MIME types of the message's parts, and for
the inline `text/calendar` part and the `.ics` attachment each, the method, UID, start, end,
summary, location, organizer and attendee.
Usage: python3 read_invite.py FILE.eml
"""
import email
import email.policy
import json
import sys

from icalendar import Calendar

msg = email.message_from_binary_file(open(sys.argv[1], "rb"), policy=email.policy.default)
out = {"parts": [p.get_content_type() for p in msg.walk()], "invites": []}
for part in msg.walk():
    if part.get_content_type() not in ("text/calendar", "application/ics"):
        continue
    cal = Calendar.from_ical(part.get_payload(decode=True))
    ev = next(c for c in cal.walk("VEVENT"))
    out["invites"].append({
        "type": part.get_content_type(),
        "filename": part.get_filename(),
        "content_method": part.get_param("method"),
        "method": str(cal.get("METHOD")),
        "uid": str(ev.get("UID")),
        "start": ev.decoded("DTSTART").isoformat(),
        "end": ev.decoded("DTEND").isoformat(),
        "stamp": ev.decoded("DTSTAMP").isoformat(),
        "summary": str(ev.get("SUMMARY")),
        "sequence": int(ev.get("SEQUENCE")),
        "status": str(ev.get("STATUS")),
        "location": str(ev.get("LOCATION")),
        "organizer": str(ev.get("ORGANIZER")),
        "attendee": str(ev.get("ATTENDEE")),
    })
print(json.dumps(out))
