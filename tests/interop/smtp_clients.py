#!/usr/bin/env python3
"""Submits mail to Mailroom with Python's smtplib, the way real MUAs do.

Usage: smtp_clients.py HOST STARTTLS_PORT TLS_PORT USER PASSWORD RCPT
Exits non-zero (with the reason on stderr) on any failure. Each submission
uses a different path: STARTTLS + AUTH PLAIN, STARTTLS + AUTH LOGIN,
implicit TLS (RFC 8314), and SCRAM-SHA-256 through the scramp library.
"""
import base64
import smtplib
import ssl
import sys
from email.message import EmailMessage

host, starttls_port, tls_port, user, password, rcpt = sys.argv[1:7]
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE  # the stack under test has a self-signed certificate


def message(subject):
    m = EmailMessage()
    m["From"] = user
    m["To"] = rcpt
    m["Subject"] = subject
    m.set_content("Hello from smtplib.\n")
    return m


# 1. Port 587 style: STARTTLS, then AUTH (smtplib picks PLAIN).
with smtplib.SMTP(host, int(starttls_port), timeout=20) as s:
    s.ehlo("client.test")
    assert s.has_extn("starttls"), "STARTTLS not offered"
    s.starttls(context=ctx)
    s.ehlo("client.test")
    s.login(user, password)
    refused = s.send_message(message("smtplib starttls plain"))
    assert not refused, refused

# 2. STARTTLS with AUTH LOGIN, as older clients do.
with smtplib.SMTP(host, int(starttls_port), timeout=20) as s:
    s.starttls(context=ctx)
    s.ehlo("client.test")
    s.user, s.password = user, password  # what smtplib's auth_login reads
    code, resp = s.auth("LOGIN", s.auth_login, initial_response_ok=False)
    assert code == 235, (code, resp)
    refused = s.send_message(message("smtplib starttls login"))
    assert not refused, refused

# 3. Port 465 style: implicit TLS.
with smtplib.SMTP_SSL(host, int(tls_port), context=ctx, timeout=20) as s:
    s.login(user, password)
    refused = s.send_message(message("smtplib implicit tls"))
    assert not refused, refused

# 4. SCRAM-SHA-256 (RFC 7677) with an independent client implementation.
try:
    import scramp
except ImportError:
    sys.exit("the scramp package is missing: pip install scramp")
with smtplib.SMTP_SSL(host, int(tls_port), context=ctx, timeout=20) as s:
    s.ehlo("client.test")
    client = scramp.ScramClient(["SCRAM-SHA-256"], user, password)
    first = base64.b64encode(client.get_client_first().encode()).decode()
    code, resp = s.docmd("AUTH", "SCRAM-SHA-256 " + first)
    assert code == 334, (code, resp)
    client.set_server_first(base64.b64decode(resp).decode())
    code, resp = s.docmd(base64.b64encode(client.get_client_final().encode()).decode())
    assert code == 334, (code, resp)
    client.set_server_final(base64.b64decode(resp).decode())  # verifies the server signature
    code, resp = s.docmd("")
    assert code == 235, (code, resp)
    refused = s.send_message(message("smtplib scram"))
    assert not refused, refused

# 5. A wrong password is refused with 535.
with smtplib.SMTP_SSL(host, int(tls_port), context=ctx, timeout=20) as s:
    try:
        s.login(user, password + "x")
    except smtplib.SMTPAuthenticationError as e:
        assert e.smtp_code == 535, e
    else:
        sys.exit("a wrong password was accepted")

print("ok: 4 messages submitted")
