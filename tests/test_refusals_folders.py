"""A folder is the user's: no command deletes or replaces a file it did not write in that run. Each
training command is pointed at an --out folder that holds a file of the user's, and at a folder inside
the installed package; each is refused with a message naming the fix, and nothing changes, in the
folder, beside it or in the package. `--overwrite` writes the command's own files and keeps the user's;
the same command run again in its own folder resumes (issue 25)."""
import json

import pytest

from coursekit import cli, models, train, zoo

FOLDER_COMMANDS = {
    "train digits-cond": lambda out: ["train", "digits-cond", "--out", out, "--steps", "2", "--no-eval"],
    "train tiny-sd": lambda out: ["train", "tiny-sd", "--out", out, "--steps", "2", "--no-eval"],
    "train tiny-sd-controlnet": lambda out: ["train", "tiny-sd-controlnet", "--out", out, "--steps", "2", "--no-eval"],
    "train tiny-sd-lcm-lora": lambda out: ["train", "tiny-sd-lcm-lora", "--out", out, "--steps", "2", "--no-eval"],
    "distill digits-cond": lambda out: ["distill", "digits-cond", "--out", out, "--steps-per-round", "2", "--no-eval"],
    "finetune": lambda out: ["finetune", "--model", "digits-uncond", "--dataset", "digits", "--resize", "--out", out,
                             "--steps", "1"],
}


def snapshot(folder):
    """Every file under `folder` with its bytes (a user's folder)."""
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def package_state():
    """Every file of the installed package with its size and modification time (the zoo is large)."""
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in train.PACKAGE_DIR.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts}


def refusal(argv) -> str:
    with pytest.raises(SystemExit) as caught:
        cli.main(argv)
    assert isinstance(caught.value.code, str), "a one-line refusal (exit status 1), not a traceback"
    return caught.value.code


def users_folder(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes\n")
    (out / "README.md").write_text("my own README\n")        # a name the training commands also write
    return out


@pytest.mark.parametrize("command", sorted(FOLDER_COMMANDS))
def test_a_folder_holding_a_users_file_is_refused_and_left_as_it_was(command, tmp_path):
    out = users_folder(tmp_path)
    before = snapshot(tmp_path)
    message = refusal(FOLDER_COMMANDS[command](str(out)))
    assert "already holds files" in message and "notes.txt" in message and "--overwrite" in message, message
    assert snapshot(tmp_path) == before, "nothing written, in the folder or beside it"


@pytest.mark.parametrize("command", sorted(FOLDER_COMMANDS))
def test_an_out_folder_inside_the_package_is_refused_and_the_package_left_as_it_was(command, tmp_path):
    before = package_state()
    for inside in (models.CHECKPOINTS / "digits-cond", models.CHECKPOINTS / "a-new-folder"):
        message = refusal(FOLDER_COMMANDS[command](str(inside)))
        assert "inside the installed coursekit package" in message and "--into-package" in message, message
    assert package_state() == before
    assert not (models.CHECKPOINTS / "a-new-folder").exists()


def test_an_out_that_is_a_file_is_refused_before_any_work(tmp_path):
    taken = tmp_path / "taken"
    taken.write_text("mine\n")
    assert "is a file" in refusal(FOLDER_COMMANDS["train digits-cond"](str(taken)))
    assert taken.read_text() == "mine\n" and [p.name for p in tmp_path.iterdir()] == ["taken"]


@pytest.mark.parametrize("command", ["train digits-cond", "train tiny-sd-controlnet"])
@pytest.mark.slow
def test_overwrite_writes_the_commands_files_and_keeps_the_users(command, tmp_path):
    """The ControlNet recipe used to delete --out whole before saving; now only its own files change."""
    out = users_folder(tmp_path)
    assert cli.main([*FOLDER_COMMANDS[command](str(out)), "--overwrite"]) in (0, None)
    assert (out / "notes.txt").read_text() == "my notes\n"
    assert (out / "README.md").read_text().startswith("---"), "the model card is the command's to write"
    assert (out / "recipe.json").is_file()
    assert not (out / "training").exists(), "the command's own checkpoints are removed once the model is saved"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"], "nothing written beside the folder"


def test_the_same_command_resumes_in_its_own_folder_and_another_command_is_refused(tmp_path):
    out = tmp_path / "run"
    argv = FOLDER_COMMANDS["train digits-cond"](str(out))
    assert cli.main(argv) in (0, None)
    assert json.loads((out / "run.json").read_text())["command"] == "coursekit train digits-cond"
    assert cli.main(argv) in (0, None), "a run folder of the same command and settings is the command's own"
    before = snapshot(tmp_path)
    message = refusal(FOLDER_COMMANDS["finetune"](str(out)))
    assert "holds another run" in message and "command" in message and "--overwrite" in message, message
    assert snapshot(tmp_path) == before


def test_evaluate_rewrites_a_card_only_where_it_is_told_to(tmp_path):
    before = package_state()
    assert "--folder DIR" in refusal(["evaluate", "digits-cond"]) and "--into-package" in refusal(["evaluate", "digits-cond"])
    assert "not both" in refusal(["evaluate", "digits-cond", "--folder", str(tmp_path), "--into-package"])
    message = refusal(["evaluate", "digits-cond", "--folder", str(models.CHECKPOINTS / "digits-cond")])
    assert "inside the installed coursekit package" in message and "--into-package" in message
    assert "holds no recipe.json" in refusal(["evaluate", "digits-cond", "--folder", str(users_folder(tmp_path))])
    assert package_state() == before


def test_a_checkpoint_of_another_recipe_is_not_evaluated_as_this_one(tmp_path):
    out = tmp_path / "m"
    zoo.train_checkpoint("digits-cond", out, steps=2, evaluate_after=False, progress=False)
    with pytest.raises(zoo.ZooError, match="holds the checkpoint 'digits-cond', not 'digits-uncond'"):
        zoo.reevaluate("digits-uncond", out)


def test_run_refuses_an_out_folder_of_the_users_and_overwrite_keeps_their_files(tmp_path):
    from tests.test_cli import write

    (tmp_path / "nb").mkdir()
    write(tmp_path / "nb" / "one.ipynb", "print(1)")
    out = users_folder(tmp_path)
    before = snapshot(tmp_path)
    message = refusal(["run", str(tmp_path / "nb"), "--out", str(out), "--quiet"])
    assert "already holds files that `coursekit run` did not write" in message and "--overwrite" in message
    assert snapshot(tmp_path) == before
    assert cli.main(["run", str(tmp_path / "nb"), "--out", str(out), "--quiet", "--overwrite"]) == 0
    assert (out / "notes.txt").read_text() == "my notes\n" and (out / "index.html").is_file()
    assert cli.main(["run", str(tmp_path / "nb"), "--out", str(out), "--quiet"]) == 0, "its own run folder is reused"
