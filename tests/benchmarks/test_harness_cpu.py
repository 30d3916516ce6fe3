"""CPU tests of the benchmark harness's graph-call rule (``benchmarks.harness.graph_calls``)."""
from benchmarks import harness


def test_graph_calls_cycle_short_calls_to_min_calls():
    assert harness.graph_calls(4, pass_us=11.0) == 32                 # 8 passes over 4 sets
    assert harness.graph_calls(5, pass_us=11.0) == 35                 # whole passes only
    assert harness.graph_calls(3, pass_us=11.0, min_calls=8) == 9


def test_graph_calls_one_pass_when_long_or_enough_sets():
    assert harness.graph_calls(4, pass_us=harness.LONG_CALL_US) == 4  # the replay gap is noise there
    assert harness.graph_calls(64, pass_us=1.0) == 64                 # already >= MIN_CALLS
    assert harness.graph_calls(1, pass_us=1.0, min_calls=1) == 1
