"""A real SMTP server on loopback (aiosmtpd) that keeps what it receives."""
from __future__ import annotations

import email
import email.policy
import re
import threading
import time
from email.message import EmailMessage

from aiosmtpd.controller import Controller

from tests.servers import free_port


class Mailbox:
    def __init__(self):
        self.messages: list[EmailMessage] = []
        self.cond = threading.Condition()

    async def handle_DATA(self, server, session, envelope):  # aiosmtpd handler hook
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with self.cond:
            self.messages.append(msg)
            self.cond.notify_all()
        return "250 OK"

    def clear(self) -> None:
        with self.cond:
            self.messages.clear()

    def to(self, addr: str) -> list[EmailMessage]:
        with self.cond:
            return [m for m in self.messages if addr.lower() in m["To"].lower()]

    def wait_for(self, addr: str, subject: str = "", timeout: float = 15.0, after: int = 0) -> EmailMessage:
        """Wait for the (after+1)-th message to `addr` whose subject contains `subject`."""
        deadline = time.time() + timeout
        with self.cond:
            while True:
                found = [m for m in self.messages
                         if addr.lower() in m["To"].lower() and subject.lower() in m["Subject"].lower()]
                if len(found) > after:
                    return found[after]
                left = deadline - time.time()
                if left <= 0:
                    raise AssertionError(f"no mail to {addr} about {subject!r}; got "
                                         f"{[(m['To'], m['Subject']) for m in self.messages]}")
                self.cond.wait(left)


def body(msg: EmailMessage) -> str:
    return msg.get_body(preferencelist=("plain",)).get_content()


def link(msg: EmailMessage) -> str:
    m = re.search(r"https?://\S+", body(msg))
    assert m, "no link in the message"
    return m.group(0)


class SMTPServer:
    def __init__(self):
        self.mailbox = Mailbox()
        self.port = free_port()
        self.controller = Controller(self.mailbox, hostname="127.0.0.1", port=self.port)

    def start(self) -> SMTPServer:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()
