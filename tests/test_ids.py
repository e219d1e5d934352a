import pytest

from tierguard.policy import SecretSource
from tierguard.proxy.ids import IdSigner, InvalidId, load_key


def test_round_trip():
    s = IdSigner(b"k")
    rid = s.issue("abc123", "mini", 7)
    d = s.verify(rid)
    assert (d.revision, d.tier, d.bucket) == ("abc123", "mini", 7)
    assert s.issue("abc123", "mini", 7) != rid  # nonce: ids are unique


def test_ids_carry_their_issue_time_and_old_ids_still_verify():
    s = IdSigner(b"k")
    assert s.verify(s.issue("r", "t", 3, now=1_800_000_123.7)).issued == 1_800_000_123
    import base64
    import hashlib
    import hmac

    payload = base64.urlsafe_b64encode(b"r|t|3|abcdef").rstrip(b"=").decode()
    mac = base64.urlsafe_b64encode(hmac.new(b"k", payload.encode(), hashlib.sha256).digest()[:16]).rstrip(b"=").decode()
    old = s.verify(f"chatcmpl-tg1.{payload}.{mac}")
    assert (old.tier, old.bucket, old.issued) == ("t", 3, None)


def test_other_replica_with_same_key_verifies():
    assert IdSigner(b"shared").verify(IdSigner(b"shared").issue("r", "t", 1)).tier == "t"


@pytest.mark.parametrize(
    "bad", [None, 42, "", "chatcmpl-123", "chatcmpl-tg1.", "chatcmpl-tg1.abc", "x" * 600]
)
def test_malformed(bad):
    with pytest.raises(InvalidId) as err:
        IdSigner(b"k").verify(bad)
    assert err.value.reason == "malformed"


def test_forged_and_tampered():
    rid = IdSigner(b"k").issue("r", "mini", 9)
    with pytest.raises(InvalidId) as err:
        IdSigner(b"other").verify(rid)
    assert err.value.reason == "bad_signature"
    payload, mac = rid[len("chatcmpl-tg1.") :].split(".")
    import base64

    forged = base64.urlsafe_b64encode(b"r|capable|9|00").rstrip(b"=").decode()
    with pytest.raises(InvalidId):
        IdSigner(b"k").verify(f"chatcmpl-tg1.{forged}.{mac}")


def test_key_sources(tmp_path, monkeypatch):
    f = tmp_path / "key"
    f.write_text("secret\n")
    assert load_key(SecretSource(file=str(f)))[0] == b"secret"
    monkeypatch.setenv("MYKEY", "v")
    assert load_key(SecretSource(env="MYKEY"))[0] == b"v"
    monkeypatch.delenv("MYKEY")
    with pytest.raises(ValueError, match="MYKEY"):
        load_key(SecretSource(env="MYKEY"))
    monkeypatch.setenv("TIERGUARD_FEEDBACK_KEY", "fromenv")
    assert load_key(None)[0] == b"fromenv"


