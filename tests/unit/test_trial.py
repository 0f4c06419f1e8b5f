"""The trial runner: resolution against the registries, schedules, checkpoints, accuracy."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from runners.engine.data import load_dataset
from runners.engine.trial import ConfigError, lr_factor, resolve, run_trial
from schemas.trial import OptimizerConfig, ScheduleConfig, TrialConfig


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_recipe_fills_unset_fields():
    resolved = resolve(TrialConfig(strategy="full_precision"))
    assert (resolved.optimizer.name, resolved.batch_size) == ("adam", 64)


def test_training_knobs_in_params_override_the_recipe():
    resolved = resolve(
        TrialConfig(
            strategy="full_precision", params={"lr": 0.05, "optimizer": "sgd", "batch_size": 32}
        )
    )
    assert (resolved.optimizer.name, resolved.optimizer.lr, resolved.batch_size) == (
        "sgd",
        0.05,
        32,
    )


def test_unknown_strategy_names_the_field():
    with pytest.raises(ConfigError, match=r"^strategy: unknown strategy 'nope'"):
        resolve(TrialConfig(strategy="nope"))


def test_unknown_param_names_the_field():
    with pytest.raises(ConfigError, match=r"^params\.bogus: "):
        resolve(TrialConfig(strategy="full_precision", params={"bogus": 1}))


def test_knob_out_of_bounds_names_the_field():
    with pytest.raises(ConfigError, match=r"^params\.lr: "):
        resolve(TrialConfig(strategy="full_precision", params={"lr": -1}))


def test_bad_model_option_names_the_field():
    with pytest.raises(ConfigError, match=r"^model_options\.hidden"):
        resolve(TrialConfig(strategy="full_precision", model_options={"hidden": [0]}))


def test_unknown_model_names_the_field():
    with pytest.raises(ConfigError, match=r"^model: unknown model"):
        resolve(TrialConfig(strategy="full_precision", model="nope"))


def test_step_schedule_multiplies_at_milestones():
    cfg = ScheduleConfig(name="step", milestones=[2, 4], gamma=0.1)
    got = [lr_factor(cfg, epoch_float=e, step=0, epochs=6, base_lr=1.0) for e in (0, 1.9, 2, 4.5)]
    assert got == pytest.approx([1, 1, 0.1, 0.01])


def test_halving_schedule_halves_every_n_steps():
    cfg = ScheduleConfig(name="halving", every_steps=200, gamma=0.5)
    assert [
        lr_factor(cfg, epoch_float=0, step=s, epochs=1, base_lr=1) for s in (0, 199, 200, 650)
    ] == [
        1,
        1,
        0.5,
        0.125,
    ]


def test_cosine_restarts_restart_at_cycle_ends():
    cfg = ScheduleConfig(name="cosine_restarts", t0=2, t_mult=2, eta_min=1e-4)
    f = [lr_factor(cfg, epoch_float=e, step=0, epochs=14, base_lr=0.1) for e in (0, 1, 1.999, 2, 6)]
    assert f[0] == 1 and f[1] == pytest.approx(0.5005) and f[2] < 0.01 and f[3] == 1 and f[4] == 1


def test_cosine_ends_at_eta_min():
    cfg = ScheduleConfig(name="cosine", eta_min=0.001)
    assert lr_factor(cfg, epoch_float=10, step=0, epochs=10, base_lr=0.1) == pytest.approx(0.01)


@pytest.mark.slow
def test_full_precision_mlp_reaches_95_percent_on_digits(digits):
    result = run_trial(TrialConfig(strategy="full_precision", epochs=10), dataset=digits)
    assert result.test_accuracy >= 0.95


def test_result_reports_every_design_metric(digits):
    result = run_trial(TrialConfig(strategy="full_precision", epochs=1), dataset=digits)
    keys = set(result.metrics())
    assert {
        "test_accuracy",
        "test_loss",
        "best_val_accuracy",
        "unique_weights",
        "weight_entropy_bits",
        "sparsity",
        "weight_bits",
        "weight_bytes",
        "compression_ratio",
        "train_seconds",
        "samples_per_second",
    } <= keys


def test_same_seed_gives_same_result(digits):
    a = run_trial(TrialConfig(strategy="full_precision", epochs=2, seed=5), dataset=digits)
    b = run_trial(TrialConfig(strategy="full_precision", epochs=2, seed=5), dataset=digits)
    assert (a.test_accuracy, a.test_loss) == (b.test_accuracy, b.test_loss)


def test_resumed_trial_ends_where_an_uninterrupted_one_does(digits, tmp_path: Path):
    cfg = TrialConfig(
        strategy="full_precision",
        epochs=4,
        optimizer=OptimizerConfig(name="sgd", lr=0.05),
        schedule=ScheduleConfig(name="cosine"),
    )
    whole = run_trial(cfg, dataset=digits)

    def stop_after_two(record, save):
        save(tmp_path / f"epoch{record.epoch}")
        return record.epoch == 2

    run_trial(cfg, dataset=digits, on_epoch=stop_after_two)
    resumed = run_trial(cfg, dataset=digits, resume_from=tmp_path / "epoch2")
    assert [h.train_loss for h in resumed.history] == [h.train_loss for h in whole.history]
    assert resumed.test_loss == whole.test_loss


def test_early_stop_from_the_callback_ends_the_trial(digits):
    result = run_trial(
        TrialConfig(strategy="full_precision", epochs=5),
        dataset=digits,
        on_epoch=lambda r, s: r.epoch == 2,
    )
    assert result.epochs_run == 2


def test_diverging_loss_raises(digits):
    from runners.engine.trial import TrialDiverged

    cfg = TrialConfig(
        strategy="full_precision", epochs=2, optimizer=OptimizerConfig(name="sgd", lr=10)
    )
    with pytest.raises(TrialDiverged):
        run_trial(cfg, dataset=digits)


def test_samples_per_second_is_positive(digits):
    result = run_trial(TrialConfig(strategy="full_precision", epochs=1), dataset=digits)
    assert result.samples_per_second > 0 and math.isfinite(result.train_seconds)


def test_every_refusal_survives_pickling_with_its_field_and_reason():
    import pickle

    from runners.engine.data import DatasetError
    from runners.engine.models import ModelError
    from runners.engine.trial import ConfigError
    from runners.sweep.space import SpecError
    from schemas.errors import FieldError
    from service.errors import InputRefused
    from strategies.bit_learning import PayloadError
    from strategies.registry import UnknownStrategyError
    from strategies.space import SpaceError

    errors = [
        ConfigError("params.lr", "must be > 0"),
        SpecError("strategies.0.name", "unknown"),
        SpaceError("bits", "out of range"),
        DatasetError("no such folder"),
        ModelError("model_options.width", "must be >= 1"),
        InputRefused("--param", "not key=value"),
        PayloadError("params.payload", "too big"),
        UnknownStrategyError("nope"),
    ]
    for e in errors:
        back = pickle.loads(pickle.dumps(e))
        assert isinstance(back, FieldError)
        assert (back.field, back.reason, str(back)) == (e.field, e.reason, f"{e.field}: {e.reason}")


def test_a_last_batch_of_one_sample_is_dropped_so_batchnorm_trains() -> None:
    # digits has 1293 training samples: batch 4 would leave one sample, which BatchNorm refuses.
    result = run_trial(TrialConfig(strategy="wrn_1bit", epochs=1, batch_size=4))
    assert result.status == "completed" and result.epochs_run == 1


def test_a_result_keeps_nan_and_infinities_through_its_json() -> None:
    """A diverged test loss (NaN) and an infinite one survive result.json's round trip."""
    import math

    from schemas.trial import TrialResult

    result = run_trial(TrialConfig(strategy="full_precision", epochs=1, device="cpu"))
    odd = result.model_copy(update={"test_loss": math.nan, "best_val_loss": math.inf})
    back = TrialResult.model_validate_json(odd.model_dump_json())
    assert math.isnan(back.test_loss) and back.best_val_loss == math.inf
    assert result.best_val_loss == result.history[result.best_epoch - 1].val_loss


@pytest.mark.parametrize("strategy", ["full_precision", "bit_regularization", "weight_fixing"])
def test_validation_every_n_steps_leaves_the_training_run_unchanged(digits, strategy, tmp_path):
    cfg = TrialConfig(strategy=strategy, epochs=2, batch_size=256)
    plain = run_trial(cfg, dataset=digits)
    curve_cfg = cfg.model_copy(update={"val_every_steps": 2})
    curved = run_trial(curve_cfg, dataset=digits)
    steps_per_epoch = math.ceil(digits.x_train.shape[0] / 256)
    assert [v.step for v in curved.val_steps] == list(range(2, 2 * steps_per_epoch + 1, 2))
    # The same run: nothing the measurement does draws a random number or moves a weight.
    assert [h.train_loss for h in curved.history] == [h.train_loss for h in plain.history]
    assert curved.test_loss == plain.test_loss
    assert not plain.val_steps
    # At an epoch's last step the curve measures what the epoch's end does, unless the
    # strategy changes the weights at the epoch's end (weight_fixing fixes a share of them).
    end = {v.step: v for v in curved.val_steps}[steps_per_epoch - steps_per_epoch % 2]
    if strategy != "weight_fixing" and steps_per_epoch % 2 == 0:
        assert end.val_accuracy == curved.history[0].val_accuracy

    def stop_after_one(record, save):
        save(tmp_path / "epoch1")
        return True

    run_trial(curve_cfg, dataset=digits, on_epoch=stop_after_one)
    resumed = run_trial(curve_cfg, dataset=digits, resume_from=tmp_path / "epoch1")
    assert resumed.val_steps == curved.val_steps
