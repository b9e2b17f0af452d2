import torch

from seekserve.sampling.sampler import Sampler, TokenLogprob, apply_penalties, apply_top_p
from seekserve.sampling_params import SamplingParams


def test_greedy_rows_take_argmax():
    logits = torch.tensor([[0.1, 3.0, 0.2], [5.0, 1.0, 0.0]])
    params = [SamplingParams(temperature=0.0)] * 2
    assert Sampler(0)(logits, params, [[], []])[0] == [1, 0]


def test_penalties_follow_the_openai_formula():
    logits = torch.zeros((2, 4))
    params = [
        SamplingParams(frequency_penalty=0.5, presence_penalty=1.0),
        SamplingParams(),
    ]
    out = apply_penalties(logits, params, [[2, 2, 3], [1]])
    assert out.tolist() == [[0.0, 0.0, -2.0, -1.5], [0.0, 0.0, 0.0, 0.0]]


def test_frequency_penalty_changes_the_greedy_choice():
    logits = torch.tensor([[2.0, 1.5, 0.0]])
    params = [SamplingParams(temperature=0.0, frequency_penalty=1.0)]
    assert Sampler(0)(logits, params, [[0]])[0] == [1]


def test_top_p_keeps_the_smallest_set_reaching_the_mass():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    kept = apply_top_p(probs, torch.tensor([0.8]))
    torch.testing.assert_close(kept, torch.tensor([[0.625, 0.375, 0.0, 0.0]]))
    # top_p 1 keeps everything
    torch.testing.assert_close(apply_top_p(probs, torch.tensor([1.0])), probs)


def test_sampling_draws_from_the_distribution_and_is_seeded():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1, 1e-9]]))
    params = [SamplingParams(temperature=1.0)]
    sampler = Sampler(123)
    draws = [sampler(logits, params, [[]])[0][0] for _ in range(4000)]
    freq = [draws.count(i) / len(draws) for i in range(4)]
    assert abs(freq[0] - 0.7) < 0.03 and abs(freq[1] - 0.2) < 0.03 and freq[3] == 0.0
    again = Sampler(123)
    assert [again(logits, params, [[]])[0][0] for _ in range(4000)] == draws


def test_mixed_batch_greedy_rows_stay_greedy():
    logits = torch.tensor([[0.0, 10.0], [0.0, 0.0]])
    params = [SamplingParams(temperature=0.0), SamplingParams(temperature=2.0, top_p=0.5)]
    for _ in range(20):
        assert Sampler(1)(logits, params, [[], []])[0][0] == 1


def test_logprobs_are_the_raw_log_softmax_with_top_k():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0], [0.0, 0.0, 0.0, 0.0]])
    params = [
        SamplingParams(temperature=0.0, frequency_penalty=2.0, logprobs=2),
        SamplingParams(temperature=0.0),
    ]
    tokens, logprobs = Sampler(0)(logits, params, [[0], []])
    assert tokens == [1, 0]  # the penalty moved the choice, not the reported distribution
    expected = torch.log_softmax(logits[0], dim=-1).tolist()
    assert logprobs[1] is None
    assert logprobs[0] == TokenLogprob(1, expected[1], [(0, expected[0]), (1, expected[1])])


def test_zero_top_logprobs_still_reports_the_chosen_token():
    logits = torch.tensor([[0.0, 3.0]])
    _, [entry] = Sampler(0)(logits, [SamplingParams(temperature=0.0, logprobs=0)], [[]])
    assert entry.token_id == 1 and entry.top == []
    assert abs(entry.logprob - torch.log_softmax(logits[0], -1)[1].item()) < 1e-6


def test_tied_logits_rank_the_greedy_token_first_in_top_logprobs():
    """bf16 logits tie exactly: greedy takes the lowest tied id, and top_logprobs lists ties
    in id order, so its first entry is the greedy token."""
    logits = torch.full((1, 300), -5.0)
    logits[0, [250, 7, 120]] = 2.0  # a three-way tie
    logits[0, 3] = 1.0
    tokens, logprobs = Sampler(seed=0)(logits, [SamplingParams(temperature=0.0, logprobs=4)], [[]])
    assert tokens == [7]
    assert [token for token, _ in logprobs[0].top] == [7, 120, 250, 3]
    assert logprobs[0].top[0][1] == logprobs[0].logprob
