"""The demo's configuration: presets, files, flags, and what a seed changes."""

from leakaudit.config import resolve_config


def test_a_seed_is_a_whole_new_replicate_and_seed_0_the_config_as_written():
    base = resolve_config(preset="tiny")
    again = resolve_config(preset="tiny", overrides={"seed": 0})
    assert again == base
    other = resolve_config(preset="tiny", overrides={"seed": 2})
    # the data and its split, every canary spec's draws, and both trainings move with the seed
    assert other.data.seed == base.data.seed + 2
    assert [c.seed for c in other.canaries] == [c.seed + 2 for c in base.canaries]
    assert other.finetune.seed == base.finetune.seed + 2 and other.dp_train.seed == base.dp_train.seed + 2
    assert other.model == base.model and other.dp.randomness == "seeded"


def test_canary_specs_need_their_own_names_and_seeds(tmp_path):
    import pytest

    from leakaudit.canaries.spec import load_spec
    from leakaudit.config import REPO_CANARIES
    from leakaudit.errors import LeakauditError

    codes = REPO_CANARIES / "recovery_codes.yaml"
    with pytest.raises(LeakauditError, match="two canary specs are named 'recovery-codes'"):
        resolve_config(preset="tiny", canary_files=[codes, codes])
    other = tmp_path / "other.yaml"
    other.write_text((codes.read_text()).replace("name: recovery-codes", "name: other-codes"))
    with pytest.raises(LeakauditError, match="'recovery-codes' and 'other-codes' share seed 1"):
        resolve_config(preset="tiny", canary_files=[codes, other])
    # every shipped spec has a seed of its own, so any of them can be combined
    seeds = [load_spec(p).seed for p in sorted(REPO_CANARIES.glob("*.yaml"))]
    small = {load_spec(REPO_CANARIES / n).seed for n in ("one_run_audit.yaml", "one_run_audit_small.yaml")}
    assert len(small) == 1 and len(set(seeds)) == len(seeds) - 1  # the two one-run sizes are never combined
