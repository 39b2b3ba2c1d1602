"""Result files come out in input-line order, whichever order shards and requests finished in."""
import io
import json
import random

from pagebatch.jobs.batch.merge import merge_results
from pagebatch.jobs.batch.results import RequestContext, ShardResult, usage_record

CTX = RequestContext("batch_x", "t", "w")


def result_for(lines, rng):
    result = ShardResult()
    for n in rng.sample(lines, len(lines)):  # requests finish in any order
        line = {"custom_id": f"c{n}"}
        usage = usage_record(CTX, n, f"c{n}", "m", "stop")
        (result.add_output if n % 3 else result.add_error)(line, usage)
    return result


def test_lines_come_out_in_input_order_and_shards_load_only_when_reached():
    rng = random.Random(0)
    rejected = result_for([2, 9, 31, 57], rng)
    shards = [(first, result_for([n for n in range(first, first + 10) if n not in (2, 9, 31, 57)], rng))
              for first in (1, 11, 21, 31, 41, 51)]
    loads = []

    def source(first, result):
        def load():
            loads.append(first)
            return result
        return first, load

    sinks = [io.StringIO() for _ in range(3)]
    sources = [source(first, result) for first, result in reversed(shards)] + [(0, lambda: rejected)]
    merged = merge_results(sources, *sinks)
    output, errors, usage = ([json.loads(line)["custom_id"] for line in s.getvalue().splitlines()] for s in sinks)
    assert output == [f"c{n}" for n in range(1, 61) if n % 3]
    assert errors == [f"c{n}" for n in range(1, 61) if not n % 3]
    assert usage == [f"c{n}" for n in range(1, 61)]
    assert loads == [1, 11, 21, 31, 41, 51]
    assert (merged.completed, merged.failed) == (len(output), len(errors))


def test_results_survive_storage_with_their_lines():
    result = result_for([5, 3, 4], random.Random(1))
    again = ShardResult.from_bytes(result.to_bytes())
    assert again.in_line_order("usage") == result.in_line_order("usage")
    assert [n for n, _ in again.in_line_order("usage")] == [3, 4, 5]
