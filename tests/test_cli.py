"""The command line as a user types it."""
import re

from click.testing import CliRunner

from infoflow.cli import main


def test_decompose_prints_tokens_prediction_error_and_time(default_model):
    result = CliRunner().invoke(main, ["decompose", "The capital of France is", "--no-lens"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "' capital'" in out and "' Paris'" in out
    assert "worst reconstruction error" in out and "time" in out and "MLP order  direct" in out
    # the last line: the top prediction's strongest sources, by demeaned logit attribution
    last = out.strip().splitlines()[-1]
    assert last.startswith("why        ' Paris' <- ") and "demeaned logit attribution" in last
    named = re.findall(r"('[^']*')@(\d+) ([+-]\d+\.\d\d)", last)
    assert len(named) == 3 and [float(v) for _, _, v in named] == sorted((float(v) for _, _, v in named), reverse=True)
    tokens = ["'The'", "' capital'", "' of'", "' France'", "' is'"]
    assert all(tokens[int(p)] == s for s, p, _ in named)


def test_decompose_bad_input_says_what_to_do(default_model):
    result = CliRunner().invoke(main, ["decompose", "one two three four five six", "--max-tokens", "3"])
    assert result.exit_code != 0 and "limit is 3" in result.output and "--max-tokens" in result.output
    result = CliRunner().invoke(main, ["decompose", "hi", "--max-memory", "lots"])
    assert result.exit_code != 0 and "512M or 4G" in result.output


def test_add_creates_file_and_refuses_duplicates(tmp_path):
    prompts = tmp_path / "new" / "prompts.toml"
    run = CliRunner().invoke
    first = run(main, ["add", "Roses are red,", "--title", "A poem", "--tags", "poetry, rhyme", "--prompts", str(prompts)])
    assert first.exit_code == 0 and "'a-poem'" in first.output
    again = run(main, ["add", "Roses are red,", "--title", "Other", "--prompts", str(prompts)])
    assert again.exit_code != 0 and "has this text already" in again.output
    same_id = run(main, ["add", "Violets are blue", "--title", "A poem", "--prompts", str(prompts)])
    assert same_id.exit_code == 0 and "'a-poem-2'" in same_id.output
    text = prompts.read_text()
    assert text.count("\n[[prompt]]\n") == 2 and "\n\n[[prompt]]\nid = \"a-poem-2\"" in text and 'tags = ["poetry", "rhyme"]' in text
