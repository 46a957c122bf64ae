import math

import pytest

from data.sampler import epoch_starts
from optim.schedules import lr_schedule, scaled_lr, warmup_constant, warmup_cosine, warmup_steps


def test_warmup_cosine_values():
    base, total, warm = 2.0, 110, 10
    assert warmup_cosine(0, base, total, warm) == 0.0
    assert warmup_cosine(5, base, total, warm) == pytest.approx(1.0)
    assert warmup_cosine(10, base, total, warm) == pytest.approx(2.0)  # peak right after warmup
    assert warmup_cosine(60, base, total, warm) == pytest.approx(1.0)  # half way through the decay
    assert warmup_cosine(35, base, total, warm) == pytest.approx(1.0 + math.cos(math.pi / 4))
    assert warmup_cosine(110, base, total, warm) == pytest.approx(0.0, abs=1e-12)
    assert warmup_cosine(500, base, total, warm) == pytest.approx(0.0, abs=1e-12)


def test_monotone_and_no_warmup():
    values = [warmup_cosine(s, 1.0, 50, 0) for s in range(51)]
    assert values[0] == 1.0 and all(a >= b for a, b in zip(values, values[1:]))


def test_warmup_constant():
    assert [warmup_constant(s, 0.4, 100, 4) for s in (0, 1, 2, 4, 99)] == pytest.approx([0, 0.1, 0.2, 0.4, 0.4])


def test_lr_scaling_rules():
    assert scaled_lr(0.3, 4096, "linear") == pytest.approx(4.8)
    assert scaled_lr(0.075, 4096, "sqrt") == pytest.approx(4.8)  # the paper: both agree at 4096
    assert scaled_lr(1.0, 512, "none") == 1.0
    with pytest.raises(ValueError):
        scaled_lr(1.0, 512, "cubic")


@pytest.mark.parametrize("dataset,batch,given,expected", [
    ("imagenet", 256, [], (0.075, "sqrt", 0.075 * 16)),        # B.1: square root below 4096
    ("imagenet", 4096, [], (0.3, "linear", 4.8)),              # the two rules agree at 4096
    ("imagenet", 8192, [], (0.3, "linear", 9.6)),
    ("imagenet", 256, ["--lr-scaling", "linear"], (0.3, "linear", 0.3)),
    ("imagenet", 8192, ["--lr-scaling", "sqrt"], (0.075, "sqrt", 0.075 * 8192 ** 0.5)),
    ("cifar10", 512, [], (1.0, "linear", 2.0)),                # the official CIFAR-10 command
    ("cifar10", 512, ["--lr-scaling", "sqrt", "--base-lr", "0.1"], (0.1, "sqrt", 0.1 * 512 ** 0.5)),
])
def test_simclr_learning_rate_follows_the_recipe(dataset, batch, given, expected):
    import simclr
    args = simclr.resolve_args(simclr.get_args_parser().parse_args(
        ["--dataset", dataset, "--batch-size", str(batch)] + given))
    assert (args.base_lr, args.lr_scaling) == expected[:2] and args.lr == pytest.approx(expected[2])
    assert 0.075 * 4096 ** 0.5 == pytest.approx(0.3 * 4096 / 256)


def test_a_rule_without_a_recipe_base_lr_asks_for_it():
    import simclr
    from utils.errors import UserError
    with pytest.raises(UserError, match="pass --base-lr"):
        simclr.resolve_args(simclr.get_args_parser().parse_args(["--dataset", "cifar10", "--lr-scaling", "sqrt"]))


def test_simclr_decays_by_cosine_by_default():
    import simclr

    def parse(argv):
        return simclr.resolve_args(simclr.get_args_parser().parse_args(argv))
    assert parse([]).cosine_anneal and parse(["--cosine-anneal"]).cosine_anneal
    assert not parse(["--no-cosine-anneal"]).cosine_anneal


def official_lr(step: int, base_lr: float, n: int, batch_size: int, epochs: int, warmup_epochs: float) -> float:
    """The official TF2 code's WarmUpAndCosineDecay (tf2/model.py, get_train_steps), in plain Python."""
    warmup_steps = int(round(warmup_epochs * n // batch_size))
    total_steps = n * epochs // batch_size + 1
    if step < warmup_steps:
        return step / float(warmup_steps) * base_lr
    decay_steps = total_steps - warmup_steps  # tf.keras.experimental.CosineDecay, alpha 0
    return base_lr * 0.5 * (1 + math.cos(math.pi * min(step - warmup_steps, decay_steps) / decay_steps))


@pytest.mark.parametrize("n, batch_size, epochs, warmup", [(50_000, 1024, 100, 10), (50_000, 512, 1000, 10),
                                                           (1_281_167, 4096, 100, 10), (20, 8, 2, 1.5)])
def test_stream_batching_has_the_official_step_counts_and_lr(n, batch_size, epochs, warmup):
    """--batching stream (the default) runs the official number of steps with the official lr at every one;
    epochs batching has (n // B) * epochs steps, 0.25% (ImageNet, B 4096) to 1.7% (CIFAR, B 1024) fewer."""
    starts = epoch_starts(n, batch_size, epochs, "stream")
    lr_at = lr_schedule(4.0, starts[-1], warmup_steps(warmup, n, batch_size, "stream"), True)
    assert starts[-1] == n * epochs // batch_size + 1
    for step in range(starts[-1]):
        assert lr_at(step) == pytest.approx(official_lr(step, 4.0, n, batch_size, epochs, warmup), rel=1e-12, abs=1e-15)
    short = epoch_starts(n, batch_size, epochs, "epochs")[-1]
    assert short == n // batch_size * epochs and warmup_steps(warmup, n, batch_size, "epochs") == round(
        warmup * (n // batch_size))
