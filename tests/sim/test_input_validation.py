"""Client input the HTTP API could pass to the core that once escaped as exceptions: now clear 400s."""

import pytest

from dynastore.core.messages import ClientPut, ClientSetBucketProps, Failure
from dynastore.core.objects import Content
from dynastore.core.quorum import QuorumError, resolve
from dynastore.sim.cluster import SimCluster


@pytest.mark.parametrize("spec", [["1"], "\u00b2", 1.5])
def test_a_quorum_that_is_neither_an_integer_nor_a_word_is_a_quorum_error(spec: object) -> None:
    """A list, a float or '²' as a quorum is a QuorumError (a 400), never another exception."""
    with pytest.raises(QuorumError):
        resolve("r", spec, 3, "quorum", 1)


def test_bucket_props_with_a_list_as_r_are_a_bad_request_not_an_exception() -> None:
    """Bucket props with r=[1] (valid JSON) are answered with a bad-request failure."""
    c = SimCluster(3)
    response = c.request("n0", ClientSetBucketProps(b"b", (("r", [1]),)))
    assert isinstance(response, Failure) and response.kind == "bad_request"


def test_a_put_whose_content_cannot_be_encoded_is_a_bad_request_not_an_exception() -> None:
    """Content with a lone surrogate in a text field (what aiohttp makes of non-UTF-8 header bytes) is a
    bad request, refused before a dot is taken or anything is stored."""
    c = SimCluster(3)
    content = Content(b"v", "text/plain", None, None, (("colour", "\udcff"),))
    response = c.request("n0", ClientPut(b"b", b"k", None, content))
    assert isinstance(response, Failure) and response.kind == "bad_request"
