"""A real SMTP server for the mailer tests (aiosmtpd), storing accepted mail in a Maildir.

Recipients choose the answer by their local part, so one run covers every case:
  defer451-*  451 to the first two RCPTs for that address, then accepted
  busy421-*   421 to the first RCPT for that address, then accepted
  always451-* 451 always (a soft bounce once the retry age runs out)
  bounce550-* 550 always (no such user)
  anything else: accepted
Usage: python3 smtp_server.py PORT MAILDIR [--starttls CERT KEY] [--auth USER:PASSWORD]
  --starttls: STARTTLS offered with this certificate and required before any mail;
  --auth: AUTH (PLAIN/LOGIN) required, over TLS, with these credentials.
"""
import argparse
import asyncio
import mailbox
import ssl
from collections import Counter

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


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


def authenticator(user, password):
    def check(server, session, envelope, mechanism, auth_data):
        ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
            user.encode(),
            password.encode(),
        )
        # handled=False: aiosmtpd itself answers 535 to a failure.
        return AuthResult(success=ok, handled=False)

    return check


async def main(args):
    extra = {}
    if args.starttls:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(*args.starttls)
        extra.update(tls_context=context, require_starttls=True)
    if args.auth:
        user, password = args.auth.split(":", 1)
        extra.update(authenticator=authenticator(user, password), auth_required=True)
    controller = Controller(Handler(args.maildir), hostname="127.0.0.1", port=args.port, **extra)
    controller.start()
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("maildir")
    parser.add_argument("--starttls", nargs=2, metavar=("CERT", "KEY"))
    parser.add_argument("--auth")
    asyncio.run(main(parser.parse_args()))
