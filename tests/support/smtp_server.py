"""A real SMTP server for the mailer tests (aiosmtpd), storing accepted mail in a Maildir.

Recipients choose the answer by their local part, so one run covers every case:
  defer451-*  451 to the first two RCPTs for that address, then accepted
  busy421-*   421 to the first RCPT for that address, then accepted
  always451-* 451 always (a soft bounce once the retry age runs out)
  bounce550-* 550 always (no such user)
  anything else: accepted
Usage: python3 smtp_server.py PORT MAILDIR
"""
import asyncio
import mailbox
import sys
from collections import Counter

from aiosmtpd.controller import Controller


class Handler:
    def __init__(self, maildir):
        self.box = mailbox.Maildir(maildir, create=True)
        self.tries = Counter()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local = address.split("@")[0].lower()
        self.tries[address] += 1
        n = self.tries[address]
        if local.startswith("bounce550"):
            return "550 5.1.1 <%s>: no such user" % address
        if local.startswith("always451"):
            return "451 4.2.2 mailbox busy"
        if local.startswith("defer451") and n <= 2:
            return "451 4.7.1 greylisted, try again later"
        if local.startswith("busy421") and n <= 1:
            return "421 4.3.2 too busy, try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.box.add(envelope.original_content)
        return "250 Message accepted for delivery"


async def main(port, maildir):
    controller = Controller(Handler(maildir), hostname="127.0.0.1", port=port)
    controller.start()
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
