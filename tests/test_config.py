import pytest

from ptlab.config import ConfigError, TrialConfig, load_trial_config


def test_errors_name_file_line_and_field(tmp_path):
    with pytest.raises(ConfigError, match="no such trial config file"):
        load_trial_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: coop\nshots: [1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+: not valid YAML"):
        load_trial_config(bad)
    bad.write_text("- coop\n")
    with pytest.raises(ConfigError, match="a mapping of fields"):
        load_trial_config(bad)
    bad.write_text("method: coop\nnoise_rate: 1.5\ntrain: {epochs: -1}\nshotz: 4\n")
    with pytest.raises(ConfigError) as err:
        load_trial_config(bad)
    text = str(err.value)
    assert "field noise_rate" in text and "field train.epochs" in text and "field shotz" in text


def test_noise_rate_needs_a_noise_type():
    with pytest.raises(ValueError, match="needs a noise_type"):
        TrialConfig(noise_rate=0.25)


def test_trial_id_is_a_content_hash_and_updates_follow_dotted_paths():
    a = TrialConfig()
    b = a.with_updates({"train.lr": 0.01, "loss": "gce", "gce_q": 0.5})
    assert b.train.lr == 0.01 and b.gce_q == 0.5 and a.train.lr == 0.002
    assert a.trial_id != b.trial_id and TrialConfig().trial_id == a.trial_id


def test_empty_file_is_the_default_trial(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_trial_config(empty) == TrialConfig()


@pytest.mark.parametrize("written, messages", [
    ("method: coopp\nbackbone: world:tiny-rnn\n",
     ["field method: unknown method 'coopp'; did you mean 'coop'?", "field backbone: unknown world backbone 'world:tiny-rnn'"]),
    # refused before any weights are loaded
    ("method: zeroshot\nbackbone: timm:vit_tiny_patch16_224:random\n",
     ["field backbone: backbone 'timm:vit_tiny_patch16_224:random' is a timm image encoder"]),
])
def test_trial_run_refuses_bad_configs_without_a_traceback(tmp_path, written, messages):
    from typer.testing import CliRunner

    from ptlab.cli import app

    config = tmp_path / "trial.yaml"
    config.write_text(written + "dataset: world:shapes\n")
    result = CliRunner().invoke(app, ["trial", "run", "--config", str(config)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    for message in messages:
        assert message in result.output



def test_noise_types_that_draw_one_training_set_are_one_trial():
    clean = TrialConfig()
    for kind in ("symmetric", "pair", "confusion"):
        at_zero = TrialConfig(noise_type=kind, noise_rate=0.0)
        # the clean trial's id, pinned since before noise at rate 0 was recognised (tests/test_registry.py)
        assert at_zero.trial_id == clean.trial_id == "4fe1d79c9f90"
        assert at_zero.model_dump()["noise_type"] == kind  # records carry the config as written
    # above rate 0 every kind is its own trial, under the id it had before
    pinned = {"symmetric": "a4b8e8741d9d", "pair": "abb44d589958", "confusion": "5653fc6efe3b",
              "ptnl": "65f77f9f9eba", "ptnl_distinct": "f51c9dd3a4ee"}
    assert {kind: TrialConfig(noise_type=kind, noise_rate=0.25).trial_id for kind in pinned} == pinned
    # ptnl kinds choose their own sample, also at rate 0: apart from the clean trial and each other, ids unchanged ...
    ptnl, distinct = TrialConfig(noise_type="ptnl"), TrialConfig(noise_type="ptnl_distinct")
    assert (ptnl.trial_id, distinct.trial_id) == ("ca13337f7703", "26415af10186")
    # ... but with shots 0 (each class's whole first half, nothing replaced) they draw the same set
    assert ptnl.with_updates({"shots": 0}).trial_id == distinct.with_updates({"shots": 0}).trial_id == "855e6e4ce7ad"
    assert TrialConfig(noise_type="ptnl", shots=0, noise_rate=0.25).trial_id != \
        TrialConfig(noise_type="ptnl_distinct", shots=0, noise_rate=0.25).trial_id
    # a method that reads no noise: every noise field is one trial, as before
    zeroshot = TrialConfig(method="zeroshot")
    assert zeroshot.with_updates({"noise_type": "symmetric", "noise_rate": 0.5}).trial_id == zeroshot.trial_id
