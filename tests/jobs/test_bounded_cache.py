from pagebatch.jobs.bounded_cache import BoundedCache


def test_keeps_the_most_recently_used_and_never_a_missing_value():
    loads: list[str] = []

    def loader(key: str, value: int | None):
        def load():
            loads.append(key)
            return value
        return load

    cache: BoundedCache[str, int] = BoundedCache(2)
    assert cache.get("a", loader("a", 1)) == 1 and cache.get("b", loader("b", 2)) == 2
    assert cache.get("a", loader("a", 99)) == 1  # kept, and now the most recent
    assert cache.get("c", loader("c", 3)) == 3  # evicts b, the least recently used
    assert cache.get("b", loader("b", 20)) == 20
    assert cache.get("x", loader("x", None)) is None and cache.get("x", loader("x", 5)) == 5  # None is not kept
    assert loads == ["a", "b", "c", "b", "x", "x"]
