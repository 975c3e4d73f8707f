"""`Pretrained` is a huggingface_hub ModelHubMixin: LAMs, policies and decoders load from a local directory or a
Hub repo id and push to the Hub, offline here (the Hub's download and upload functions are replaced)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelHubMixin

from masklam.downstream.decoder import ActionDecoder
from masklam.downstream.policy import ImagePolicy
from masklam.errors import MasklamError
from masklam.models import LAMConfig, build_lam, load_lam
from masklam.models import pretrained as pretrained_module
from masklam.models.lam import LatentActionModel

torch.set_num_threads(1)


def tiny_lam():
    torch.manual_seed(0)
    return build_lam(LAMConfig(method="lapo", action_dim=2, state_dim=3, img_hw=32, latent_dim=4, head_dim=16,
                               head_blocks=1)).eval()


def frames(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (2, 1, 32, 32, 3), generator=g, dtype=torch.uint8)


class FakeHub:
    """Stands in for HfApi (create_repo, upload_folder) and hf_hub_download, over a local folder per repo."""

    def __init__(self, root: Path):
        self.root, self.calls = root, []

    def api(self, token=None):
        hub = self

        class Api:
            def create_repo(self, repo_id, private=None, exist_ok=False, **kw):
                hub.calls.append(("create_repo", repo_id, private))
                return type("Url", (), {"repo_id": repo_id})()

            def upload_folder(self, repo_id, folder_path, commit_message=None, **kw):
                hub.calls.append(("upload_folder", repo_id, sorted(p.name for p in Path(folder_path).iterdir())))
                shutil.copytree(folder_path, hub.root / repo_id, dirs_exist_ok=True)
                return f"https://huggingface.co/{repo_id}/commit/0"

        return Api()

    def download(self, repo_id, filename, revision=None, **kw):
        self.calls.append(("download", repo_id, filename, revision))
        path = self.root / repo_id / filename
        if not path.is_file():
            raise FileNotFoundError(f"404 Client Error: {repo_id}/{filename} not found")
        return str(path)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    import huggingface_hub.hub_mixin

    fake = FakeHub(tmp_path / "hub")
    monkeypatch.setattr(huggingface_hub.hub_mixin, "HfApi", fake.api)
    monkeypatch.setattr(pretrained_module, "hf_hub_download", fake.download)
    return fake


def test_every_saved_network_is_a_model_hub_mixin_and_a_policy_round_trips_through_the_hub(hub):
    for cls in (LatentActionModel, ImagePolicy, ActionDecoder):
        assert issubclass(cls, ModelHubMixin)
    from masklam.downstream.policy import PolicyConfig

    torch.manual_seed(0)
    policy = ImagePolicy(PolicyConfig(out_dim=4, action_dim=2, frame_stack=1, img_hw=32, hidden=8)).eval()
    policy.push_to_hub("me/policy")
    back = ImagePolicy.from_pretrained("me/policy")
    assert ("download", "me/policy", "model.safetensors", None) in hub.calls and back.cfg == policy.cfg
    with torch.no_grad():
        assert torch.equal(back.predict(frames(0)), policy.predict(frames(0)))


def test_push_to_hub_uploads_the_two_files_and_a_repo_id_loads_them(hub, tmp_path):
    lam = tiny_lam()
    url = lam.push_to_hub("me/tiny-lam", private=True)
    assert url == "https://huggingface.co/me/tiny-lam/commit/0"
    assert hub.calls[:2] == [("create_repo", "me/tiny-lam", True),
                             ("upload_folder", "me/tiny-lam", ["config.json", "model.safetensors"])]
    assert json.loads((tmp_path / "hub" / "me/tiny-lam" / "config.json").read_text())["model"]["method"] == "lapo"
    loaded = load_lam("me/tiny-lam")  # not a local directory: fetched through (the fake) hf_hub_download
    assert ("download", "me/tiny-lam", "model.safetensors", None) in hub.calls
    assert type(loaded) is type(lam) and not loaded.training
    assert torch.equal(loaded.latent(frames(0), frames(1)), lam.latent(frames(0), frames(1)))
    LatentActionModel.from_pretrained("me/tiny-lam", revision="v1")
    assert hub.calls[-1] == ("download", "me/tiny-lam", "model.safetensors", "v1")


def test_save_pretrained_can_push_and_keeps_its_local_format(hub, tmp_path):
    decoder = ActionDecoder(4, 2)
    decoder.save_pretrained(tmp_path / "dec", push_to_hub=True, repo_id="me/dec")
    assert sorted(p.name for p in (tmp_path / "dec").iterdir()) == ["config.json", "model.safetensors"]  # no card
    back = ActionDecoder.from_pretrained("me/dec")
    for a, b in zip(decoder.state_dict().values(), back.state_dict().values()):
        assert torch.equal(a, b)


def test_local_directories_still_load_by_path_or_string(tmp_path, monkeypatch):
    lam = tiny_lam()
    lam.save_pretrained(tmp_path / "runs" / "lam", {"step": 3})
    monkeypatch.chdir(tmp_path)
    for name in ("runs/lam", str(tmp_path / "runs" / "lam"), Path("runs/lam")):
        assert torch.equal(load_lam(name).latent(frames(0), frames(1)), lam.latent(frames(0), frames(1)))


def test_missing_directories_and_repos_are_one_line_errors(hub, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    with pytest.raises(MasklamError, match=r"not a policy directory \(no config.json\): runs/typo"):
        ImagePolicy.from_pretrained("runs/typo")  # its parent exists: a missing directory, not a Hub request
    with pytest.raises(MasklamError) as e:
        ImagePolicy.from_pretrained("someone/nothing")
    assert "cannot load the policy 'someone/nothing': no such directory" in str(e.value)
    assert "\n" not in str(e.value) and hub.calls == [("download", "someone/nothing", "config.json", None)]
    assert pretrained_module.is_local("./x") and pretrained_module.is_local("a/b/c")
    assert not pretrained_module.is_local("user/model")
    with pytest.raises(MasklamError, match=r"not a policy directory \(no config.json\): typo"):
        ImagePolicy.from_pretrained("typo")  # no '/': a missing directory, not a Hub request (retried for ~30 s)
    assert pretrained_module.is_local("typo") and len(hub.calls) == 1


def test_the_wrong_kind_of_directory_says_what_it_holds(tmp_path):
    tiny_lam().save_pretrained(tmp_path / "lam", {"step": 3})
    ActionDecoder(4, 2, layers=3).save_pretrained(tmp_path / "dec")
    with pytest.raises(MasklamError, match=f"^{tmp_path / 'lam'} holds a latent action model, not a decoder$"):
        ActionDecoder.from_pretrained(tmp_path / "lam")
    with pytest.raises(MasklamError, match=f"^{tmp_path / 'lam'} holds a latent action model, not a policy$"):
        ImagePolicy.from_pretrained(tmp_path / "lam")
    with pytest.raises(MasklamError, match=f"^{tmp_path / 'dec'} holds a decoder, not a latent action model$"):
        load_lam(tmp_path / "dec")
    (tmp_path / "dec" / "config.json").write_text(json.dumps({"hidden": "x"}))  # nothing masklam knows
    with pytest.raises(MasklamError, match="bad config.json in .* for a decoder"):
        ActionDecoder.from_pretrained(tmp_path / "dec")


def test_decode_and_label_take_a_lam_by_hub_repo_id(hub, tmp_path, write_synthetic_dataset):
    """`masklam decode`, `label` and `bc` take `--lam user/name` and fetch the LAM like `load_lam` does: the same
    latents as its local copy, and the decoder and the labelled file name the repo, not a local path."""
    import h5py

    from masklam import cli

    data = write_synthetic_dataset(tmp_path / "d.h5", n_traj=4, length=8)
    lam = tiny_lam()
    lam.push_to_hub("me/tiny-lam")
    lam.save_pretrained(tmp_path / "local")
    common = ["--data", str(data), "--device", "cpu"]
    assert cli.main(["decode", "--lam", "me/tiny-lam", "--labels", "2", "--updates", "5", "--batch-size", "8",
                     "--out", str(tmp_path / "dec"), *common]) == 0
    assert json.loads((tmp_path / "dec" / "config.json").read_text())["source"] == "lam:me/tiny-lam"
    run_config = json.loads((tmp_path / "dec" / "run_config.json").read_text())  # how it was fitted
    assert (run_config["lam"], run_config["labels"], run_config["updates"]) == ("me/tiny-lam", 2, 5)
    for source, out in [("me/tiny-lam", "hub.h5"), (str(tmp_path / "local"), "local.h5")]:
        extra = ["--decoder", str(tmp_path / "dec")] if source == "me/tiny-lam" else []
        assert cli.main(["label", "--lam", source, "--out", str(tmp_path / out), *common, *extra]) == 0
    assert cli.main(["bc", "--target", "latent", "--lam", "me/tiny-lam", "--updates", "2", "--batch-size", "8",
                     "--frame-stack", "1", "--out", str(tmp_path / "bc"), *common]) == 0  # latent BC on its latents
    assert (tmp_path / "bc" / "model.safetensors").is_file()
    with h5py.File(tmp_path / "hub.h5") as hub_file, h5py.File(tmp_path / "local.h5") as local_file:
        assert hub_file.attrs["latent_lam"] == "me/tiny-lam"
        for name in local_file:
            assert torch.equal(torch.from_numpy(hub_file[name]["latent_action"][()]),
                               torch.from_numpy(local_file[name]["latent_action"][()]))
            assert hub_file[name]["decoded_action"].shape == (8, 2)
