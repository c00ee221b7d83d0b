"""The engine's scheduling on a fake runner with a handful of cache blocks, in milliseconds.

``CacheCheckingRunner`` keeps a token in each cache slot it is given, reads every sequence's
context back through its block table, and answers with a token that depends on the whole context.
So a block table that points at another sequence's blocks, or a context recomputed wrongly after a
preemption, changes the tokens a request gets: each test compares them with the same request run alone.
"""


from jupyter_tt.serving.engine import FinishReason, SamplingParams
from tests.support.engines import CharTokenizer, add, make_engine, run, tokens_of


def alone(prompt, max_tokens):
    engine, outputs = make_engine(), []
    rid = add(engine, prompt, max_tokens, outputs)
    run(engine)
    return tokens_of(outputs, rid)


def test_a_step_runs_every_decode_before_it_reads_a_new_prompt():
    engine, outputs = make_engine(), []
    first = add(engine, [1, 2, 3], 20, outputs)
    engine.step()  # reads the first prompt
    engine.step()  # its first decode
    add(engine, list(range(1, 20)), 4, outputs)  # a prompt longer than a step's budget
    engine.step()
    step = engine.runner.steps[-1]
    assert [len(s.tokens) for s in step] == [1, 7]  # the decode, then a chunk of what is left of 8 tokens
    assert step[0].start_pos == 4 and step[0].tokens == tokens_of(outputs, first)[1:2]  # the first request's decode


def test_a_prompt_is_read_in_chunks_of_the_prefill_budget_when_nothing_decodes():
    engine, outputs = make_engine(max_prefill_tokens=12), []
    add(engine, list(range(1, 30)), 2, outputs)
    run(engine)
    assert [len(step[0].tokens) for step in engine.runner.steps] == [12, 12, 5, 1]
    assert [s.want_logits for step in engine.runner.steps for s in step] == [False, False, True, True]


def test_when_blocks_run_out_the_newest_sequence_is_preempted_and_recomputed_to_the_same_tokens():
    prompts = [[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11]]
    # Each needs 4 blocks to finish (6 + 10 tokens); the cache has 6, so both cannot run to the end together.
    engine, outputs = make_engine(num_blocks=6), []
    ids = [add(engine, p, 10, outputs) for p in prompts]
    run(engine)
    assert engine.preemptions >= 1
    assert [tokens_of(outputs, rid) for rid in ids] == [alone(p, 10) for p in prompts]
    assert [o.finish_reason for o in outputs if o.finished] == [FinishReason.LENGTH] * 2
    assert engine.free_blocks == 6


def test_a_request_that_does_not_fit_the_cache_waits_rather_than_fail():
    engine, outputs = make_engine(num_blocks=4), []
    ids = [add(engine, [1, 2, 3, 4, 5, 6, 7, 8], 8, outputs) for _ in range(3)]  # 4 blocks each: one at a time
    run(engine)
    assert [len(tokens_of(outputs, rid)) for rid in ids] == [8, 8, 8] and engine.free_blocks == 4


def test_cancelling_a_request_frees_its_blocks_at_the_next_step():
    engine, outputs = make_engine(num_blocks=8), []
    rid = add(engine, [1, 2, 3, 4, 5], 20, outputs)
    engine.step()
    engine.step()
    assert engine.free_blocks == 6
    engine.cancel(rid)
    engine.step()
    assert engine.free_blocks == 8 and not engine.has_work
    assert outputs[-1].finished and outputs[-1].finish_reason is FinishReason.ABORT
    assert outputs[-1].completion_tokens == len(tokens_of(outputs, rid)) == 2


def test_cancelling_a_waiting_request_ends_it_without_running_it():
    engine, outputs = make_engine(num_blocks=2), []
    add(engine, [1, 2, 3, 4, 5, 6, 7], 1, outputs)  # takes both blocks
    waiting = add(engine, [1, 2], 1, outputs)
    engine.step()
    engine.cancel(waiting)
    run(engine)
    assert [o.finish_reason for o in outputs if o.request_id == waiting] == [FinishReason.ABORT]
    assert all(len(s) == 1 for s in engine.runner.steps)  # the cancelled one never joined a step


def test_a_failing_step_ends_its_requests_with_an_error_and_frees_their_blocks():
    engine, outputs = make_engine(num_blocks=8), []
    engine.runner.step = lambda sequences: (_ for _ in ()).throw(RuntimeError("device fell over"))
    add(engine, [1, 2, 3], 4, outputs)
    engine.step()
    assert outputs[-1].finish_reason is FinishReason.ERROR and "device fell over" in outputs[-1].error
    assert engine.free_blocks == 8 and engine.stats["failed_steps"] == 1


def test_a_stop_string_split_across_tokens_is_never_delivered():
    engine, outputs = make_engine(), []
    want = alone([1, 2, 3], 12)
    text = CharTokenizer().decode(want)
    stop = text[4:6]  # two letters, which arrive one token at a time
    params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True, stop=[stop])
    engine.add_request([1, 2, 3], params, outputs.append)
    run(engine)
    assert "".join(o.text for o in outputs) == text[: text.find(stop)]
    assert outputs[-1].finish_reason is FinishReason.STOP
