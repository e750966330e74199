"""Masking secrets in anything the controller writes down or sends out.

Plans carry URLs (hooks, checks) that may hold passwords or tokens, and commands
and hooks answer with text that may quote them. Log lines go through a
``Redactor`` as a structlog processor (``controller.logging``); everything else
that leaves the process or is stored for people to read (events, incidents,
notifications, task results, the API's views and a plan's text) goes through
``redact``, which uses the same rules and every secret value the settings hold.

The rules know secrets by their shape, so a cut in the wrong place hides one from
them: output kept in part is cut with ``masked_tail``, which masks first. A secret
with no shape (a plain word in a URL path) is known to no rule: plans name such URLs
by environment variable instead (``url_env``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache
from typing import Any, TypeVar

T = TypeVar("T")

MASK = "***"

# Each rule below masks one shape a secret takes in text; ``mask_text`` applies them
# in order. The shapes are the ones secrets take in what plans, commands and hooks
# write: URLs (userinfo, query parameters, webhook paths), headers and config lines
# ("Authorization: Basic …", "x-api-key: …", "passphrase = …"), JSON, PEM blocks.

# Patterns that begin with a run of name characters start only where such a run
# starts: tried from inside a long run, each would scan the rest of it again
# (quadratic time on a command's long output).
_SCHEME_START = r"(?<![a-zA-Z0-9+.-])"
_NAME_START = r"(?<![A-Za-z0-9_.-])"

# A user and a password: the user stays readable. The user name may be empty:
# redis://:password@host is how Redis URLs carry one.
_URL_PASSWORD = re.compile(
    rf"(?P<head>{_SCHEME_START}[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)[^@\s/]+@"
)
# A token as the only userinfo (http://TOKEN@host, how GitHub and many CI systems
# take one): without a colon nothing tells a user name from a token, so all of it.
_URL_USERINFO = re.compile(rf"(?P<head>{_SCHEME_START}[a-zA-Z][a-zA-Z0-9+.-]*://)[^:/?#@\s\"'<>]+@")

_SECRET_WORDS = (
    r"(password|passwd|passphrase|secret|token|authorization|credential|cookie|"
    r"api[-_]?key|private[-_]?key|signature)"
)
# A dict key is a name for sure, so any secret word inside it makes its value secret.
_SECRET_KEYS = re.compile(_SECRET_WORDS, re.IGNORECASE)
# ?access_token=…, &api-key=…, &X-Amz-Signature=…, ?sig=… (Azure SAS) in a URL.
_SECRET_QUERY = re.compile(
    rf"(?P<head>[?&](?:[A-Za-z0-9_.-]*{_SECRET_WORDS}[A-Za-z0-9_.-]*|sig|key)=)"
    r"[^&\s#\"'<>]*[^&\s#\"'<>:]",  # a ":" after it ends a sentence, not the value
    re.IGNORECASE,
)
_BEARER = re.compile(r"(?P<head>\bBearer\s+)[^\s\"',]+", re.IGNORECASE)

# "name: value" and "name=value" outside URLs: headers, config lines, JSON, Python
# reprs, logfmt. In text, "name: " is also how messages begin ("token_errors: fail:
# …"), so here a name counts only when it ends with a secret word (x-api-key,
# private_key, X-Auth-Token, client_secret, Set-Cookie), not when it merely holds
# one; and only such a name is matched at all, so that no other "name: value" can
# swallow a secret that follows it.
_SECRET_NAME = (
    rf"{_NAME_START}[A-Za-z0-9_.-]*?"
    r"(?:password|passwd|pwd|passphrase|secret|token|authorization|credential|cookie|"
    r"apikey|signature|(?<![A-Za-z0-9])(?:key|sig))s?"
)
_AUTH_SCHEMES = r"(?:basic|bearer|digest|token|bot|negotiate|ntlm|aws4-hmac-sha256)[ \t]+"
_WORD = r"[^\s\"'\\&,;<>]*[^\s\"'\\&,;<>:]"  # a ":" after it ends a sentence
_ASSIGNMENT = re.compile(
    rf"(?P<name>{_SECRET_NAME})(?:"
    # JSON inside a quoted string, its quotes escaped: \"private_key\": \"…\"
    r"(?P<escaped>\\[\"'][ \t]*[:=][ \t]*\\[\"'])[^\"'\\\r\n]*(?=\\[\"'])"
    # a quoted value, all of it: "passphrase": "open sesame", password='…'
    r"|(?P<quoted>[\"']?[ \t]*[:=][ \t]*(?P<q>[\"']))(?:\\.|(?!(?P=q))[^\\\r\n])*(?=(?P=q))"
    # a header or a label: the words up to the end of the phrase
    rf"|(?P<colon>[\"']?[ \t]*:[ \t]*(?:{_AUTH_SCHEMES})?){_WORD}(?:[ \t]+{_WORD})*"
    # name=value: one word, as in logfmt and on command lines
    rf"|(?P<equals>[\"']?[ \t]*=[ \t]*(?:{_AUTH_SCHEMES})?){_WORD}"
    r")",
    re.IGNORECASE,
)
# The same at the start of a line (a header, a YAML or INI line): the value is the
# rest of the line, whatever it holds ("passphrase: it's a secret, really").
_LINE_ASSIGNMENT = re.compile(
    rf"^(?P<head>[ \t#<>*-]*{_SECRET_NAME}[ \t]*[:=][ \t]*(?:{_AUTH_SCHEMES})?)"
    r"[^\s\"'][^\r\n]*",
    re.IGNORECASE | re.MULTILINE,
)
# A key in PEM form, as a command that prints a config shows it: the whole block
# (to the end of the text when it was cut before its end line).
_PEM = re.compile(
    r"-----BEGIN (?P<kind>[A-Z0-9 ]*PRIVATE KEY)-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)",
    re.DOTALL,
)
# Webhook services whose URL path *is* the secret (Slack, Discord, Teams, Telegram,
# Zapier, IFTTT): everything after the service's own prefix.
_WEBHOOK_PATH = re.compile(
    r"(?P<head>(?:hooks\.slack\.com/(?:services|workflows|triggers)"
    r"|(?:[a-z0-9-]+\.)*discord(?:app)?\.com/api/webhooks"
    r"|[a-z0-9-]+\.webhook\.office\.com/webhookb2"
    r"|outlook\.office(?:365)?\.com/webhook"
    r"|api\.telegram\.org"
    r"|hooks\.zapier\.com/hooks/catch"
    r"|maker\.ifttt\.com/trigger)/)"
    r"[^\s?#\"'<>]*[^\s?#\"'<>:]",
    re.IGNORECASE,
)
# Any other URL's path: a run of name characters that looks generated (see ``_looks_generated``)
# is masked, since many webhook receivers put their secret there.
_URL_PATH = re.compile(
    rf"(?P<head>{_SCHEME_START}[a-zA-Z][a-zA-Z0-9+.-]*://[^\s/?#\"'<>]+)(?P<path>/[^\s?#\"'<>]*)"
)
_PATH_RUN = re.compile(r"[A-Za-z0-9_-]{20,}")

# What the rules cannot match without, looked for first (in the lower-cased text):
# most values hold none of it (numbers, verdicts, queries), and a few substring
# tests cost far less than the substitutions they spare.
_NAME_STEMS = (
    "passw",
    "passphrase",
    "pwd",
    "secret",
    "token",
    "authorization",
    "credential",
    "cookie",
    "key",
    "sig",
)
_WEBHOOK_HOSTS = (
    "hooks.slack.com",
    "discord",
    "webhook.office.com",
    "outlook.office",
    "api.telegram.org",
    "hooks.zapier.com",
    "maker.ifttt.com",
)


def _mask_assignment(match: re.Match[str]) -> str:
    """The name and its separator (and quote, and scheme) kept, the value masked."""
    separator = match["escaped"] or match["quoted"] or match["colon"] or match["equals"]
    return f"{match['name']}{separator}{MASK}"


def _looks_generated(run: str) -> bool:
    """A run of name characters in a URL path no person named: long, and mixing
    digits with letters (hex, base64url, UUIDs) or, from 20 characters, digits with
    both cases. Paths people write (``/healthz``, ``/v1/checkout``, ``/services/T000``)
    stay readable."""
    if len(run) < 20:
        return False
    digits = any(c.isdigit() for c in run)
    lower, upper = any(c.islower() for c in run), any(c.isupper() for c in run)
    if len(run) >= 32:
        return digits and (lower or upper)
    return digits and lower and upper


def _mask_path(match: re.Match[str]) -> str:
    path = _PATH_RUN.sub(lambda run: MASK if _looks_generated(run[0]) else run[0], match["path"])
    return match["head"] + path


def mask_text(text: str) -> str:
    """``text`` with every secret the rules recognise masked (the settings' secret
    values are ``Redactor``'s to add). Masking twice changes nothing."""
    lowered = text.lower()
    if "-----BEGIN" in text:
        text = _PEM.sub(
            lambda m: f"-----BEGIN {m['kind']}-----{MASK}-----END {m['kind']}-----", text
        )
    if "://" in text:
        if "@" in text:
            text = _URL_PASSWORD.sub(rf"\g<head>{MASK}@", text)
            text = _URL_USERINFO.sub(rf"\g<head>{MASK}@", text)
        text = _URL_PATH.sub(_mask_path, text)
    if any(host in lowered for host in _WEBHOOK_HOSTS):
        text = _WEBHOOK_PATH.sub(rf"\g<head>{MASK}", text)
    if "=" in text and ("?" in text or "&" in text):
        text = _SECRET_QUERY.sub(rf"\g<head>{MASK}", text)
    if (":" in text or "=" in text) and any(stem in lowered for stem in _NAME_STEMS):
        text = _LINE_ASSIGNMENT.sub(rf"\g<head>{MASK}", text)
        text = _ASSIGNMENT.sub(_mask_assignment, text)
    if "bearer" in lowered:
        text = _BEARER.sub(rf"\g<head>{MASK}", text)
    return text


class Redactor:
    """A structlog processor that masks secrets in every value of a log line."""

    def __init__(self, secrets: Iterable[str] = ()):
        self.secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def scrub(self, value: Any) -> Any:
        if isinstance(value, str):
            value = mask_text(value)
            for secret in self.secrets:
                value = value.replace(secret, MASK)
            return value
        if isinstance(value, dict):
            return {
                k: MASK if isinstance(k, str) and _SECRET_KEYS.search(k) and v else self.scrub(v)
                for k, v in value.items()
            }
        if isinstance(value, list | tuple):
            return type(value)(self.scrub(v) for v in value)
        return value

    def __call__(self, _logger: Any, _name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
        return self.scrub(event_dict)


def settings_secrets() -> list[str]:
    """Every secret value in the settings: tokens, passwords, passwords inside URLs."""
    from config.settings import get_settings

    settings = get_settings()
    found: list[str] = []
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        text = value.get_secret_value() if hasattr(value, "get_secret_value") else value
        if not isinstance(text, str):
            continue
        if hasattr(value, "get_secret_value"):
            found.append(text)
            # name:role:token lists: the token is everything after the second colon.
            found += [part.split(":", 2)[2] for part in text.split(",") if part.count(":") >= 2]
        match = re.search(r"://[^:/@\s]*:([^@\s/]+)@", text)
        if match:
            found.append(match.group(1))
    return found


@lru_cache(maxsize=1)
def shared_redactor() -> Redactor:
    """The process's redactor, built on first use: the settings are read once, not on
    every event written.

    Settings that cannot be loaded must not turn recording an event or sending a
    notification into a crash, so they leave the pattern rules (URL passwords,
    token query parameters, bearer values, secret-sounding keys) in force."""
    try:
        secrets = settings_secrets()
    except Exception:  # invalid or unreadable settings: patterns only
        secrets = []
    return Redactor(secrets)


def reset_redaction_cache() -> None:
    """Forget the cached redactor, so that the next ``redact`` reads the settings again
    (after tests change the environment and clear ``get_settings``)."""
    shared_redactor.cache_clear()


def redact(value: T) -> T:
    """``value`` with every secret masked: strings, and dicts, lists and tuples of them
    at any depth (values under secret-sounding keys become ``MASK``); other values
    come back as they are. The shape is kept, so stored JSON stays readable."""
    return shared_redactor().scrub(value)


# How much of a long output is masked before it is cut: far more than any record
# keeps of it (a few hundred characters) and enough for a PEM key or a long header
# whole, bounded so that a command printing megabytes costs a few milliseconds.
MASK_WINDOW = 65_536


def masked_tail(text: str, chars: int = MASK_WINDOW) -> str:
    """The last ``chars`` characters of ``text``, masked before the cut: cut first, the
    cut can fall inside a secret's shape (the ``https://user:`` of a URL, the name of
    ``x-api-key: …``, a settings token cut in two), and what is left of it no rule
    recognises."""
    return redact(text[-MASK_WINDOW:])[-chars:]
