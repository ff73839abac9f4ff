"""The client's multipart parser reads every sibling exactly as the standard MIME parser would."""

from __future__ import annotations

import email.parser
import email.policy

from hypothesis import given, settings
from hypothesis import strategies as st

from dynastore.client.http import parse_multipart

BOUNDARY = "0f3a9c1d2e4b5a6978c1d2e3"

values = st.binary(max_size=200).filter(lambda b: BOUNDARY.encode() not in b)
meta = st.dictionaries(
    st.from_regex(r"[a-z][a-z0-9-]{0,8}", fullmatch=True),
    st.from_regex(r"[ -~]{0,12}", fullmatch=True).map(str.strip),
    max_size=3,
)


def build(siblings: list[tuple[bytes, str, dict[str, str]]]) -> bytes:
    """The body our server (and Riak) sends for a 300 with Accept: multipart/mixed."""
    chunks = []
    for i, (value, ctype, usermeta) in enumerate(siblings):
        lines = f'Content-Type: {ctype}\r\nETag: "tag{i}"\r\nLast-Modified: Sun, 22 Nov 2026 05:00:00 GMT\r\n'
        lines += "".join(f"X-Riak-Meta-{k}: {v}\r\n" for k, v in usermeta.items())
        chunks.append(f"\r\n--{BOUNDARY}\r\n{lines}\r\n".encode() + value)
    return b"".join(chunks) + f"\r\n--{BOUNDARY}--\r\n".encode()


def reference(body: bytes) -> list[tuple[bytes, str, dict[str, str], str]]:
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: multipart/mixed; boundary={BOUNDARY}\r\n\r\n".encode() + body
    )
    out = []
    for part in message.iter_parts():
        payload = part.get_payload(decode=True)
        usermeta = {k[12:].lower(): str(v) for k, v in part.items() if k.lower().startswith("x-riak-meta-")}
        out.append(
            (
                payload if isinstance(payload, bytes) else b"",
                part.get_content_type(),
                usermeta,
                str(part.get("ETag", "")).strip('"'),
            )
        )
    return out


@settings(max_examples=300, deadline=None)
@given(
    siblings=st.lists(
        st.tuples(values, st.sampled_from(["text/plain", "application/json", "image/png"]), meta),
        min_size=1,
        max_size=5,
    )
)
def test_every_sibling_is_read_as_the_standard_parser_reads_it(
    siblings: list[tuple[bytes, str, dict[str, str]]],
) -> None:
    """Values with arbitrary bytes (line ends, dashes) and metadata come back whole, in order."""
    body = build(siblings)
    parsed = parse_multipart(body, f"multipart/mixed; boundary={BOUNDARY}")
    assert [(v.data, v.content_type, dict(v.usermeta), v.vtag) for v in parsed] == reference(body)
    assert [v.data for v in parsed] == [value for value, _, _ in siblings]


def test_a_quoted_boundary_and_lf_only_line_ends_are_accepted() -> None:
    """Servers may quote the boundary and end lines with LF alone."""
    body = b"--b1\nContent-Type: text/plain\n\none\n--b1\nContent-Type: text/plain\n\ntwo\n--b1--\n"
    parsed = parse_multipart(body, 'multipart/mixed; boundary="b1"')
    assert [v.data for v in parsed] == [b"one", b"two"]
