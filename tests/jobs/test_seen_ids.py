"""SeenIds: repeated custom_ids found exactly, in a table that stays compact as it grows."""
from pagebatch.jobs.batch.seen_ids import SeenIds


def test_every_repeat_is_found_and_no_new_id_is_taken_for_one():
    seen = SeenIds(capacity=16)  # grows many times on the way
    ids = [f"req-{i}" for i in range(20_000)] + ["", "é", "a\udfffb", "x" * 512]
    assert all(seen.add(i) for i in ids)
    assert len(seen) == len(ids)
    assert not any(seen.add(i) for i in ids[::7])
    assert seen.add("req-20000") and not seen.add("req-20000")
    assert len(seen._low) <= 2 * len(seen) * 3 // 2 + 16  # at most 2/3 full, doubling: about 24-48 bytes an id
