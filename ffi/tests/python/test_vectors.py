"""The published ratchet transcript (vectors/ratchet_transcript.json), replayed through the bindings.

The same scenarios as ffi/tests/kotlin (VectorTest.kt). Needs the wheel built with the `hazmat`
feature, which `cargo xtask test` does for its test build (shipped wheels never have it).
`VectorRatchet` is not part of the `samizdat` API: it is taken from the generated module,
`samizdat._native`, as it is.
"""

import json
from collections import Counter
from pathlib import Path

import pytest

from samizdat._native import VectorRatchet, VectorRatchetError

VECTORS = Path(__file__).resolve().parents[3] / "vectors"


@pytest.fixture(scope="module")
def case():
    transcript = json.loads((VECTORS / "ratchet_transcript.json").read_text())
    return transcript["cases"][0]


def b(text):
    return bytes.fromhex(text)


def alice(case):
    return VectorRatchet.initiator(
        b(case["root_key"]),
        b(case["hka"]),
        b(case["nhkb"]),
        b(case["associated_data"]),
        b(case["bob_ratchet_public"]),
        b(case["alice_ratchet_secret"]),
    )


def bob(case):
    return VectorRatchet.responder(
        b(case["root_key"]), b(case["hka"]), b(case["nhkb"]), b(case["associated_data"]), b(case["bob_ratchet_secret"])
    )


def reload(ratchet):
    """A ratchet loaded from the stored encoding of another (which must survive the trip)."""
    state = ratchet.state()
    loaded = VectorRatchet.from_state(state)
    assert loaded.state() == state
    return loaded


def test_transcript_replays_byte_for_byte(case):
    parties = {"alice": alice(case), "bob": bob(case)}
    assert parties["alice"].ratchet_public_key() == b(case["alice_ratchet_public"])
    assert parties["bob"].ratchet_public_key() == b(case["bob_ratchet_public"])
    sent = {}
    counts = Counter()
    for i, event in enumerate(case["events"]):
        where = f"event {i} ({event['event']} of message {event.get('message')})"
        if event["event"] == "send":
            sender = event["sender"]
            wire = parties[sender].encrypt(b(event["plaintext"]), b(event["random"]))
            assert wire == b(event["wire"]), where
            sent[event["message"]] = wire
            counts[f"sent_by_{sender}"] += 1
        elif event["event"] == "deliver":
            party = parties[event["to"]]
            wire = b(event["altered_wire"]) if event.get("altered_wire") else sent[event["message"]]
            key_before, state_before = party.ratchet_public_key(), party.state()
            counts["deliveries"] += 1
            if event["error"] is None:
                assert party.decrypt(wire, b(event["random"])) == b(event["decrypted"]), where
                if event["new_ratchet_key"] is not None:
                    assert event["key"] == "dh_step", where
                    assert party.ratchet_public_key() == b(event["new_ratchet_key"]) != key_before, where
                else:
                    assert party.ratchet_public_key() == key_before, where
                if event["key"] == "dh_step":
                    counts["dh_steps"] += 1
                elif event["key"] == "skipped":
                    counts["from_skipped_keys"] += 1
            else:
                kind = event["error"]["error"]
                if kind == "duplicate":
                    with pytest.raises(VectorRatchetError.Duplicate) as raised:
                        party.decrypt(wire, b(event["random"]))
                    assert raised.value.counter == event["error"]["counter"], where
                    counts["duplicates"] += 1
                elif kind == "rollback":
                    with pytest.raises(VectorRatchetError.Rollback) as raised:
                        party.decrypt(wire, b(event["random"]))
                    assert raised.value.counter == event["error"]["counter"], where
                    counts["rollbacks"] += 1
                elif kind == "unauthenticated":
                    with pytest.raises(VectorRatchetError.Unauthenticated):
                        party.decrypt(wire, b(event["random"]))
                    counts["unauthenticated"] += 1
                elif kind == "no_matching_state":
                    with pytest.raises(VectorRatchetError.NoMatchingState):
                        party.decrypt(wire, b(event["random"]))
                    counts["no_matching_state"] += 1
                else:
                    pytest.fail(f"{where}: unknown error {kind}")
                # A rejected message changes nothing.
                assert party.state() == state_before, where
            assert party.stored_skipped_keys() == event["skipped_keys"], where
            assert party.receiving_chains() == event["receiving_chains"], where
        elif event["event"] == "restore":
            # A restored backup: the party's state as it was after an earlier event.
            parties[event["party"]] = VectorRatchet.from_state(b(event["state"]))
        else:
            pytest.fail(f"{where}: unknown event")
        if i % 25 == 24:
            parties = {name: reload(ratchet) for name, ratchet in parties.items()}
    assert dict(counts) == case["summary"]
    assert parties["alice"].state() == b(case["alice_final_state"])
    assert parties["bob"].state() == b(case["bob_final_state"])


def test_altered_vector_is_refused(case):
    # The replay above would notice a vector changed by one byte: here, the first message's wire.
    first = case["events"][0]
    wire = alice(case).encrypt(b(first["plaintext"]), b(first["random"]))
    altered = bytearray(b(first["wire"]))
    altered[-1] ^= 1
    assert bytes(altered) != wire
    receiver = bob(case)
    before = receiver.state()
    with pytest.raises(VectorRatchetError.Unauthenticated):
        receiver.decrypt(bytes(altered), b"")
    assert receiver.state() == before


def test_scripted_randomness_must_be_exact(case):
    first = case["events"][0]
    sender = alice(case)
    before = sender.state()
    with pytest.raises(VectorRatchetError.InvalidArgument) as raised:
        sender.encrypt(b(first["plaintext"]), b(first["random"])[:23])
    assert "23 bytes given" in raised.value.reason
    assert sender.state() == before
    # Still the state of the vector: the proper call gives the published bytes.
    assert sender.encrypt(b(first["plaintext"]), b(first["random"])) == b(first["wire"])
    with pytest.raises(VectorRatchetError.InvalidArgument):
        VectorRatchet.responder(bytes(31), bytes(32), bytes(32), b"", bytes(32))
    with pytest.raises(VectorRatchetError.Malformed):
        VectorRatchet.from_state(bytes([7, 7, 7]))
