"""DPO-family losses against hand calculations written out from the formulas, and against TRL."""

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from open_instruct.train.dpo_loss import metrics, preference_loss, sequence_logps


def logsig(x: float) -> float:
    return -math.log1p(math.exp(-x))


def t(*xs):
    return torch.tensor(xs, dtype=torch.float32)


# Two pairs, summed log-probs and lengths used by several tests.
PC, PR = t(-10.0, -20.0), t(-14.0, -18.0)  # policy chosen / rejected
RC, RR = t(-11.0, -19.0), t(-13.0, -19.0)  # reference chosen / rejected
NC, NR = torch.tensor([4, 10]), torch.tensor([2, 5])


def close(a, b, tol=1e-5):
    assert torch.allclose(
        torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32), atol=tol
    ), (a, b)


# ---------------------------------------------------------------- sequence_logps


def test_sequence_logps_padded_and_packed_agree_and_ignore_masked_tokens():
    # Padded: row 0 = seq 0 (prompt 2 tokens, response 3), row 1 = seq 1 (prompt 1, response 2, 2 pad).
    lp = t(0.0, 0.0, -1.0, -2.0, -3.0)
    labels0 = torch.tensor([-100, -100, 5, 6, 7])
    lp1 = t(0.0, -0.5, -0.25, 0.0, 0.0)
    labels1 = torch.tensor([-100, 8, 9, -100, -100])
    padded_lp = torch.stack([lp, lp1])
    padded_labels = torch.stack([labels0, labels1])
    padded_idx = torch.tensor([[0, 0, 0, 0, 0], [1, 1, 1, -1, -1]])
    s, n = sequence_logps(padded_lp, padded_idx, 2, labels=padded_labels)
    close(s, [-6.0, -0.75])
    assert n.tolist() == [3, 2]  # prompt (-100) positions are not tokens
    # Packed: both sequences back to back in one row, then padding.
    packed_lp = torch.cat([lp, lp1[:3], t(0.0)]).unsqueeze(0)
    packed_labels = torch.cat([labels0, labels1[:3], torch.tensor([-100])]).unsqueeze(0)
    packed_idx = torch.tensor([[0, 0, 0, 0, 0, 1, 1, 1, -1]])
    s2, n2 = sequence_logps(packed_lp, packed_idx, 2, labels=packed_labels)
    close(s2, s)
    assert n2.tolist() == n.tolist()
    # mask= gives the same as labels=.
    s3, n3 = sequence_logps(packed_lp, packed_idx, 2, mask=packed_labels != -100)
    close(s3, s)
    assert n3.tolist() == [3, 2]


def test_sequence_logps_requires_a_mask_and_keeps_gradients():
    lp = t(-1.0, -2.0).unsqueeze(0).requires_grad_()
    idx = torch.tensor([[0, 0]])
    with pytest.raises(ValueError):
        sequence_logps(lp, idx, 1)
    s, _ = sequence_logps(lp, idx, 1, mask=torch.tensor([[0, 1]]))
    s.sum().backward()
    assert lp.grad.tolist() == [[0.0, 1.0]]


def test_sequence_logps_untrained_minus_inf_does_not_leak():
    lp = torch.tensor([[float("-inf"), -1.0]])
    s, n = sequence_logps(lp, torch.tensor([[0, 0]]), 1, labels=torch.tensor([[-100, 3]]))
    assert s.tolist() == [-1.0] and n.tolist() == [1]


# ---------------------------------------------------------------- losses by hand


def test_dpo_sigmoid_by_hand():
    beta = 0.1
    out = preference_loss(PC, PR, RC, RR, loss_type="dpo", beta=beta)
    # pair 0: h = (-10 - -11) - (-14 - -13) = 1 - (-1) = 2 ; pair 1: h = (-20 - -19) - (-18 - -19) = -1 - 1 = -2
    expected = [-logsig(0.1 * 2), -logsig(0.1 * -2)]
    close(out.losses, expected)
    close(out.loss, sum(expected) / 2)
    close(out.chosen_rewards, [0.1 * 1, 0.1 * -1])
    close(out.rejected_rewards, [0.1 * -1, 0.1 * 1])
    close(out.margins, [0.2, -0.2])
    assert out.accuracies.tolist() == [1.0, 0.0]


def test_dpo_label_smoothing_by_hand():
    beta, eps = 0.5, 0.1
    out = preference_loss(PC, PR, RC, RR, loss_type="dpo", beta=beta, label_smoothing=eps)
    expected = [-(1 - eps) * logsig(beta * h) - eps * logsig(-beta * h) for h in (2.0, -2.0)]
    close(out.losses, expected)
    # Smoothing raises the loss of a confidently-right pair relative to plain DPO.
    plain = preference_loss(PC, PR, RC, RR, loss_type="dpo", beta=beta)
    assert out.losses[0] > plain.losses[0]


def test_dpo_norm_by_hand_from_sums():
    beta = 5.0
    out = preference_loss(PC, PR, RC, RR, NC, NR, loss_type="dpo_norm", beta=beta)
    # pair 0: (1)/4 - (-1)/2 = 0.75 ; pair 1: (-1)/10 - (1)/5 = -0.3
    h = [1 / 4 - (-1) / 2, -1 / 10 - 1 / 5]
    close(out.losses, [-logsig(beta * h[0]), -logsig(beta * h[1])])
    close(out.chosen_rewards, [5 * 1 / 4, 5 * -1 / 10])
    close(out.rejected_rewards, [5 * -1 / 2, 5 * 1 / 5])


def test_dpo_norm_from_per_token_logps_with_unequal_lengths_and_masking():
    # One pair in a padded batch of 2 rows (row 0 chosen, row 1 rejected); `pol` and `ref` are the
    # per-token log-probs of policy and reference. Chosen has 3 response tokens, rejected 1;
    # prompts are -100 and padding is seq_index -1.
    labels = torch.tensor(
        [
            [-100, -100, 11, 12, 13],  # chosen: prompt 2 + response 3
            [-100, -100, 21, -100, -100],  # rejected: prompt 2 + response 1 + 2 pad
        ]
    )
    seq_index = torch.tensor([[0, 0, 0, 0, 0], [1, 1, 1, -1, -1]])
    pol = torch.tensor([[0.0, 0.0, -0.5, -1.0, -1.5], [0.0, 0.0, -2.0, 0.0, 0.0]])
    ref = torch.tensor([[0.0, 0.0, -1.0, -1.0, -1.0], [0.0, 0.0, -1.0, 0.0, 0.0]])
    ps, n = sequence_logps(pol, seq_index, 2, labels=labels)
    rs, _ = sequence_logps(ref, seq_index, 2, labels=labels)
    beta = 5.0
    out = preference_loss(ps[:1], ps[1:], rs[:1], rs[1:], n[:1], n[1:], loss_type="dpo_norm", beta=beta)
    # chosen mean logratio = ((-0.5 - -1) + (-1 - -1) + (-1.5 - -1)) / 3 = (0.5 + 0 - 0.5)/3 = 0
    # rejected mean logratio = (-2 - -1) / 1 = -1   =>  h = 0 - (-1) = 1
    close(out.loss, -logsig(5.0 * 1.0))
    close(out.chosen_rewards, [0.0])
    close(out.rejected_rewards, [-5.0])
    # Here summed DPO happens to see the same h; give every chosen token a log-ratio of +0.3 so
    # the mean (0.3) and the sum (0.9) differ, and check dpo_norm divides by the token count.
    pol2 = pol.clone()
    pol2[0, 2:] = torch.tensor([-0.7, -0.7, -0.7])  # each +0.3 over ref
    ps2, _ = sequence_logps(pol2, seq_index, 2, labels=labels)
    norm = preference_loss(ps2[:1], ps2[1:], rs[:1], rs[1:], n[:1], n[1:], loss_type="dpo_norm", beta=beta)
    summ = preference_loss(ps2[:1], ps2[1:], rs[:1], rs[1:], loss_type="dpo", beta=beta)
    close(norm.loss, -logsig(5.0 * (0.3 - (-1.0))))  # mean: 0.9/3 = 0.3
    close(summ.loss, -logsig(5.0 * (0.9 - (-1.0))))  # sum: 0.9


def test_simpo_by_hand_and_reference_free():
    beta, gamma = 2.0, 1.0
    out = preference_loss(PC, PR, None, None, NC, NR, loss_type="simpo", beta=beta, gamma=gamma)
    # pair 0: 2*(-10/4) - 2*(-14/2) - 1 = -5 + 14 - 1 = 8 ; pair 1: 2*(-20/10) - 2*(-18/5) - 1 = -4 + 7.2 - 1 = 2.2
    close(out.losses, [-logsig(8.0), -logsig(2.2)])
    close(out.chosen_rewards, [-5.0, -4.0])
    close(out.rejected_rewards, [-14.0, -7.2])
    close(out.margins, [9.0, 3.2])  # margins exclude gamma
    # Reference values are ignored by simpo.
    with_ref = preference_loss(PC, PR, RC, RR, NC, NR, loss_type="simpo", beta=beta, gamma=gamma)
    close(with_ref.losses, out.losses)
    # gamma_beta_ratio r from the SimPO repo maps to gamma = r * beta.
    r = 0.5
    ratio_form = [-logsig(beta * (-10 / 4 - -14 / 2 - r))]
    close(
        preference_loss(PC[:1], PR[:1], None, None, NC[:1], NR[:1], "simpo", beta, gamma=r * beta).losses,
        ratio_form,
    )


def test_ipo_by_hand():
    beta = 0.5
    out = preference_loss(PC, PR, RC, RR, NC, NR, loss_type="ipo", beta=beta)
    # h as for dpo_norm: 0.75 and -0.3 ; target 1/(2*0.5) = 1
    close(out.losses, [(0.75 - 1.0) ** 2, (-0.3 - 1.0) ** 2])
    close(out.chosen_rewards, [0.5 * 1 / 4, 0.5 * -1 / 10])


def test_accuracy_counts_ties_as_wrong_and_metrics():
    same = t(-3.0, -3.0)
    out = preference_loss(same, same, same, same, loss_type="dpo", beta=0.1)
    assert out.accuracies.tolist() == [0.0, 0.0]
    close(out.loss, math.log(2.0))
    m = metrics(preference_loss(PC, PR, RC, RR, loss_type="dpo", beta=0.1))
    assert set(m) == {
        "loss",
        "rewards/chosen",
        "rewards/rejected",
        "rewards/margin",
        "rewards/accuracy",
        "logps/chosen",
        "logps/rejected",
    }
    assert m["rewards/accuracy"] == 0.5
    assert m["logps/chosen"] == pytest.approx(-15.0)
    assert m["logps/rejected"] == pytest.approx(-16.0)
    assert m["rewards/margin"] == pytest.approx(0.0, abs=1e-6)


def test_argument_errors():
    with pytest.raises(ValueError):
        preference_loss(PC, PR, None, None, NC, NR, loss_type="dpo_norm", beta=5.0)
    with pytest.raises(ValueError):
        preference_loss(PC, PR, RC, RR, loss_type="dpo_norm", beta=5.0)  # lengths missing
    with pytest.raises(ValueError):
        preference_loss(PC, PR, RC, RR, loss_type="kto", beta=5.0)
    with pytest.raises(ValueError):
        preference_loss(PC, PR, RC, RR, NC, NR, loss_type="ipo", beta=0.5, label_smoothing=0.1)


def test_gradient_raises_chosen_and_lowers_rejected():
    pc, pr = PC.clone().requires_grad_(), PR.clone().requires_grad_()
    preference_loss(pc, pr, RC, RR, NC, NR, loss_type="dpo_norm", beta=5.0).loss.backward()
    assert (pc.grad < 0).all() and (pr.grad > 0).all()  # descent raises chosen, lowers rejected
    assert torch.isfinite(pc.grad).all()


# ---------------------------------------------------------------- TRL 1.16 cross-check


def _trl_loss(loss_type, beta, per_token_logps, completion_mask, ref_chosen, ref_rejected):
    """Run TRL 1.16's real ``DPOTrainer._compute_loss`` on given per-token log-probs.

    The method needs a trainer only for attributes and a model forward; a namespace with those
    attributes and a fake model returning our per-token log-probs lets the loss code itself run
    unchanged (precomputed reference log-probs, reverse-KL, no weighting)."""
    dpo_trainer = pytest.importorskip("trl.trainer.dpo_trainer")
    n2, t_len = per_token_logps.shape
    outputs = SimpleNamespace(
        log_probs=per_token_logps,
        entropy=torch.zeros(n2, t_len),
        mean_logits=torch.zeros(n2, t_len),
        is_top1=torch.zeros(n2, t_len, dtype=torch.bool),
    )

    class FakeModel:
        training = True

        def __call__(self, **kwargs):
            return outputs

    ident = lambda x: x  # noqa: E731
    fake = SimpleNamespace(
        model=FakeModel(),
        accelerator=SimpleNamespace(device=torch.device("cpu"), gather_for_metrics=ident, gather=ident),
        aux_loss_enabled=False,
        ld_alpha=None,
        precompute_ref_logps=True,
        f_divergence_type="reverse_kl",
        loss_types=[loss_type],
        loss_weights=[1.0],
        beta=beta,
        label_smoothing=0.0,
        use_weighting=False,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
    )
    # TRL's completion_mask covers input_ids (one longer than the shifted log-probs).
    full_mask = torch.cat([torch.zeros(n2, 1, dtype=torch.long), completion_mask.long()], dim=1)
    inputs = {
        "input_ids": torch.zeros(n2, t_len + 1, dtype=torch.long),
        "attention_mask": torch.ones(n2, t_len + 1, dtype=torch.long),
        "completion_mask": full_mask,
        "ref_chosen_logps": ref_chosen,
        "ref_rejected_logps": ref_rejected,
    }
    return dpo_trainer.DPOTrainer._compute_loss(fake, FakeModel(), inputs, return_outputs=False)


@pytest.mark.parametrize(
    ("ours", "theirs", "beta"),
    [("dpo", "sigmoid", 0.1), ("dpo_norm", "sigmoid_norm", 5.0), ("ipo", "ipo", 0.5)],
)
def test_matches_trl_dpo_loss(ours, theirs, beta):
    g = torch.Generator().manual_seed(0)
    n_pairs, t_len = 3, 6
    # Batch layout TRL uses: [chosen_0..chosen_{n-1}, rejected_0..rejected_{n-1}], unequal lengths.
    mask = torch.zeros(2 * n_pairs, t_len, dtype=torch.bool)
    for row, length in enumerate([6, 3, 1, 2, 5, 4]):
        mask[row, t_len - length :] = True  # prompt first, then the response
    token_logps = (-torch.rand(2 * n_pairs, t_len, generator=g) * 3).masked_fill(~mask, 0.0)
    ref_sums = -torch.rand(2 * n_pairs, generator=g) * 6
    seq_index = torch.arange(2 * n_pairs).unsqueeze(1).expand(-1, t_len)
    sums, lens = sequence_logps(token_logps, seq_index, 2 * n_pairs, mask=mask)
    out = preference_loss(
        sums[:n_pairs],
        sums[n_pairs:],
        ref_sums[:n_pairs],
        ref_sums[n_pairs:],
        lens[:n_pairs],
        lens[n_pairs:],
        loss_type=ours,
        beta=beta,
    )
    trl_loss = _trl_loss(theirs, beta, token_logps, mask, ref_sums[:n_pairs], ref_sums[n_pairs:])
    close(out.loss, trl_loss, tol=1e-6)


def test_sequence_logps_accumulates_low_precision_in_float32():
    lp = torch.full((1, 2048), -0.01, dtype=torch.bfloat16)
    s, n = sequence_logps(lp, torch.zeros(1, 2048, dtype=torch.long), 1, mask=torch.ones(1, 2048))
    assert s.dtype == torch.float32 and n.tolist() == [2048]
    close(s, [2048 * float(torch.tensor(-0.01, dtype=torch.bfloat16))], tol=1e-3)
