"""prepare_inputs is pure: exact tensors for a mixed decode + prefill step."""

import torch

from seekserve.engine.outputs import ScheduledRequest, SchedulerOutput
from seekserve.runner.inputs import prepare_inputs, sliding_window_masks


def test_mixed_step_layout():
    out = SchedulerOutput(
        scheduled=[
            # decode at position 5 of a request whose blocks are [3, 8]
            ScheduledRequest("d", [42], 5, [3, 8], True),
            # prefill chunk, positions 0..2 of blocks [1], not the end of its prompt
            ScheduledRequest("p1", [10, 11, 12], 0, [1], False),
            # prefill chunk, positions 4..5 of blocks [0, 6], end of its prompt
            ScheduledRequest("p2", [20, 21], 4, [0, 6], True),
        ],
        preempted_request_ids=[],
    )
    inputs = prepare_inputs(out, block_size=4)
    assert inputs.token_ids.tolist() == [42, 10, 11, 12, 20, 21]
    assert inputs.positions.tolist() == [5, 0, 1, 2, 4, 5]
    # slot = block_id * 4 + position % 4
    assert inputs.slot_mapping.tolist() == [8 * 4 + 1, 4, 5, 6, 6 * 4 + 0, 6 * 4 + 1]
    assert inputs.logits_indices.tolist() == [0, 5]
    assert inputs.sample_request_ids == ["d", "p2"]

    decode, prefill = inputs.groups
    assert decode.is_decode and (decode.token_start, decode.num_tokens) == (0, 1)
    assert decode.q_index.tolist() == [[0]]
    assert decode.block_table.tolist() == [[3, 8]]
    # whole blocks: positions 6, 7 of block 8 are padding, masked
    assert decode.kv_index.tolist() == [[12, 13, 14, 15, 32, 33, 34, 35]]
    assert decode.mask[0, 0].tolist() == [[True] * 6 + [False] * 2]
    assert not decode.causal

    assert not prefill.is_decode and (prefill.token_start, prefill.num_tokens) == (1, 5)
    assert prefill.q_index.tolist() == [[1, 2, 3], [4, 5, 1]]  # padding → group start
    assert prefill.q_valid.tolist() == [[True, True, True], [True, True, False]]
    assert prefill.block_table.tolist() == [[1, 0], [0, 6]]  # padding → block 0
    assert prefill.kv_index.tolist() == [[4, 5, 6, 7, 0, 1, 2, 3], [0, 1, 2, 3, 24, 25, 26, 27]]
    t, f = True, False
    assert prefill.mask[:, 0].tolist() == [
        [[t, f, f, f, f, f, f, f], [t, t, f, f, f, f, f, f], [t, t, t, f, f, f, f, f]],
        # padded row: kv 0
        [[t, t, t, t, t, f, f, f], [t, t, t, t, t, t, f, f], [t, f, f, f, f, f, f, f]],
    ]
    assert prefill.mask.dtype == torch.bool and not prefill.causal
    assert prefill.q_lens.tolist() == [3, 2] and decode.q_lens.tolist() == [1]

    # the sampling rows (d's position 5, p2's position 5) as a decode group over all K/V
    sample = inputs.sample_group
    assert sample is not None and sample.is_decode
    assert sample.q_index.tolist() == [[0], [1]]  # rows of q[logits_indices]
    assert sample.kv_lens.tolist() == [6, 6]
    assert sample.block_table.tolist() == [[3, 8], [0, 6]]
    assert sample.mask[:, 0, 0].tolist() == [[t] * 6 + [f] * 2, [t] * 6 + [f] * 2]
    moved = inputs.to(torch.device("cpu"), torch.bfloat16).sample_group
    assert moved is not None and torch.equal(moved.block_table, sample.block_table)


def test_a_decode_only_step_has_no_sample_group():
    out = SchedulerOutput([ScheduledRequest("d", [42], 5, [3, 8], True)], [])
    assert prepare_inputs(out, block_size=4).sample_group is None


def test_a_lone_prefill_from_position_zero_is_causal_and_needs_no_bias():
    """A causal group attends with `is_causal` or the prefill kernel: its mask stays (sliding
    windows narrow it) but no additive bias is filled for it; other groups get theirs."""
    out = SchedulerOutput([ScheduledRequest("p", [10, 11, 12], 0, [5], True)], [])
    (group,) = prepare_inputs(out, block_size=4).to(torch.device("cpu"), torch.bfloat16).groups
    assert group.causal and not group.is_decode
    assert group.bias is None
    assert group.mask[0, 0].tolist() == [
        [True, False, False, False],
        [True, True, False, False],
        [True, True, True, False],
    ]
    inf = float("-inf")
    out = SchedulerOutput([ScheduledRequest("p", [10, 11], 4, [5, 6], True)], [])
    (group,) = prepare_inputs(out, block_size=4).to(torch.device("cpu"), torch.bfloat16).groups
    assert not group.causal and group.bias.dtype == torch.bfloat16
    assert group.bias[0, 0].tolist() == [
        [0.0, 0.0, 0.0, 0.0, 0.0, inf, inf, inf],
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, inf, inf],
    ]
    # the same chunk after a cached prefix, or beside another prefill, is not
    out = SchedulerOutput([ScheduledRequest("p", [10, 11], 4, [5, 6], True)], [])
    assert not prepare_inputs(out, block_size=4).groups[0].causal


def test_sliding_window_masks_keep_the_last_positions_and_padding_rows():
    out = SchedulerOutput(
        scheduled=[
            ScheduledRequest("d", [42], 5, [3, 8], True),
            ScheduledRequest("p1", [10, 11, 12], 0, [1], False),
            ScheduledRequest("p2", [20, 21], 4, [0, 6], True),
        ],
        preempted_request_ids=[],
    )
    inputs = prepare_inputs(out, block_size=4)
    decode, prefill = sliding_window_masks(inputs, window=3)
    t, f = True, False
    # the decode at position 5 sees positions 3, 4, 5
    assert decode[0, 0].tolist() == [[f, f, f, t, t, t, f, f]]
    assert prefill[:, 0].tolist() == [
        [[t, f, f, f, f, f, f, f], [t, t, f, f, f, f, f, f], [t, t, t, f, f, f, f, f]],
        # positions 4, 5 see (1..4], (2..5]; the padding query keeps its mask (kv 0)
        [[f, f, t, t, t, f, f, f], [f, f, f, t, t, t, f, f], [t, f, f, f, f, f, f, f]],
    ]
