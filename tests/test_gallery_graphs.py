"""The gallery's attribution graphs (issue 23, item 3): declared targets, the graph sidecar the
build writes beside each data file, the cache that holds it, hostile graph files, and the
`infoflow graph` command (its --json in circuit-tracer's schema)."""
import json
import math
import re
import zlib

import msgpack
import numpy as np
import pytest
from click.testing import CliRunner

from infoflow.build import BuildError, _entry_path, build, read_cached, write_cached
from infoflow.cli import main
from infoflow.config import SiteConfig
from infoflow.datafile import DataFileError, decode_array, encode_array
from infoflow.graphfile import MAX_NODES, check_graph_document, read_graph_entry
from infoflow.model import fingerprint
from infoflow.prompts import PromptError, load_prompts, parse_prompts


def _sidecar(site, entry):
    doc = msgpack.unpackb((site / entry["graph"]).read_bytes(), raw=False, strict_map_key=False)
    check_graph_document(doc)
    return doc


def test_sidecar_holds_the_declared_targets_graph(gallery):
    site = gallery["site"]
    manifest = json.loads((site / "data" / "manifest.json").read_text())
    entry = next(e for e in manifest["prompts"] if e["id"] == "capital")
    assert re.fullmatch(r"data/graph/capital\.[0-9a-f]{12}\.msgpack", entry["graph"])
    doc = _sidecar(site, entry)
    assert doc["main"] == entry["data"].rsplit("/", 1)[1] and doc["prompt"] == "capital"
    first = doc["graphs"][0]
    assert first["target"]["text"] == " Paris" and first["contrast"]["text"] == " London"
    # T is the data file's own logit difference at the last position (its stored top-5 logits)
    data = msgpack.unpackb((site / entry["data"]).read_bytes(), raw=False, strict_map_key=False)
    ids = decode_array(data["predictions"]["ids"])[-1]
    logits = decode_array(data["predictions"]["logits"])[-1]
    by_text = {data["strings"][int(i)]: float(v) for i, v in zip(ids, logits)}
    assert abs(first["value"] - (by_text[" Paris"] - by_text[" London"])) <= 1e-4
    assert abs(first["frozen_value"] - first["value"]) <= 1e-3 * abs(first["value"])
    # then the top-3 predictions at the last position, demeaned
    rest = doc["graphs"][1:]
    assert [g["target"]["text"] for g in rest] == [data["strings"][int(i)] for i in ids[:3]]
    assert all(g["contrast"] is None for g in rest)
    check = first["check"]                           # the ablation check of the first graph
    assert len(check["rows"]) == 40 and abs(check["value"] - first["value"]) <= 1e-3
    for g in doc["graphs"]:
        read_graph_entry(g)
    # a prompt that declares nothing gets the top-3 graphs alone
    hostile = _sidecar(site, next(e for e in manifest["prompts"] if e["id"] == "hostile"))
    assert len(hostile["graphs"]) == 3 and all(g["contrast"] is None for g in hostile["graphs"])
    # the page names the sidecar for the viewer to fetch when the Paths view opens
    assert f'data-graph-src="../{entry["graph"]}"' in (site / entry["page"]).read_text()
    assert gallery["summary"].sizes["capital graph"] == (site / entry["graph"]).stat().st_size


def test_cache_entry_without_its_graph_is_recomputed(gallery, tmp_path):
    cfg = gallery["cfg"]
    p = next(p for p in load_prompts(cfg.prompts) if p.id == "capital")
    path = _entry_path(cfg, p, fingerprint(None, cfg.cache))
    doc = read_cached(path)
    assert doc is not None and "graph" in doc                # the cache holds the graph
    stale = tmp_path / path.name
    write_cached(stale, msgpack.packb({k: v for k, v in doc.items() if k != "graph"}, use_bin_type=True))
    with pytest.warns(UserWarning, match="no graph sidecar"):
        assert read_cached(stale) is None


def test_multi_token_target_is_refused_in_one_line(tmp_path, test_cache):
    prompts = tmp_path / "prompts.toml"
    prompts.write_text('[[prompt]]\nid = "dursley"\ntitle = "Induction"\ntext = "One day, Mr."\n'
                       'target = " Dursley"\n', encoding="utf-8")
    cfg = SiteConfig(prompts=prompts, out=tmp_path / "site", cache=str(test_cache))
    with pytest.raises(BuildError) as e:
        build(cfg, progress=False)
    msg = str(e.value)
    assert "\n" not in msg and "'dursley'" in msg and "SmolLM2-135M-Instruct" in msg
    assert "['ĠD', 'urs', 'ley']" in msg and "targets = { SmolLM2-135M-Instruct" in msg
    assert not (tmp_path / "site").exists()


def test_declared_targets_are_validated_and_picked_per_model():
    head = '[[prompt]]\nid = "a"\ntitle = "A"\ntext = "x y"\n'
    p = parse_prompts(head + 'target = " m"\ncontrast = " k"\ntargets = { gemma3-270m = " muda" }\n')[0]
    assert p.graph_target("SmolLM2-135M-Instruct") == (" m", " k")
    assert p.graph_target("gemma3-270m") == (" muda", " k")
    for bad in ('target = 3\n', 'target = ""\n', 'targets = { gemma3-270m = 1 }\n', 'targets = " m"\n'):
        with pytest.raises(PromptError, match="entry 1"):
            parse_prompts(head + bad)


def test_gallery_targets_are_one_token_on_the_default_model(default_model):
    _one_token_everywhere(default_model, "SmolLM2-135M-Instruct")


@pytest.mark.gemma
def test_gallery_targets_are_one_token_on_gemma(gemma_model):
    _one_token_everywhere(gemma_model, "gemma3-270m")


def _one_token_everywhere(lm, model):
    from infoflow.gallery_graphs import graph_specs
    declared = [p for p in load_prompts("prompts/gallery.toml") if p.target]
    assert {"ioi-mary-john", "induction-random", "agreement-clause", "capital-of-france"} <= {p.id for p in declared}
    for p in declared:
        spec = graph_specs(p, lm, model)[0]           # raises TargetError on a split token
        assert isinstance(spec.target, int) and (p.contrast is None) == (spec.contrast is None)


# ----------------------------------------------------------------------------- hostile files


def _arr(values, dtype):
    return encode_array(np.asarray(values), dtype)


def _doc(**graph):
    entry = {"value": 1.0, "frozen_value": 1.0, "completeness": 1.0,
             "nodes": {"kind": _arr([0, 4], "u8"), "layer": _arr([0, 1], "u16"), "head": _arr([0, 0], "u16"),
                       "position": _arr([0, 0], "u16"), "effect": _arr([1.0, 1.0], "f32")},
             "edges": {"src": _arr([0], "u32"), "dst": _arr([1], "u32"), "weight": _arr([1.0], "f32")}}
    for key, value in graph.items():
        section, _, field = key.partition("__")
        if field:
            entry[section][field] = value
        else:
            entry[section] = value
    return {"schema": 1, "kind": "infoflow-graph", "tokens": ["a"], "graphs": [entry]}


def test_hostile_graph_files_are_refused():
    good = _doc()
    check_graph_document(good)
    read_graph_entry(good["graphs"][0])
    huge = {"dtype": "u8", "shape": [MAX_NODES + 1], "data": zlib.compress(b"\0" * 16), "codec": "deflate"}
    hostile = {
        "huge node count": _doc(nodes__kind=huge),
        "huge edge count": _doc(edges__src={"dtype": "u32", "shape": [1 << 40], "data": b""}),
        "NaN value": _doc(value=math.nan),
        "infinite completeness": _doc(completeness=math.inf),
        "mismatched lengths": _doc(edges__dst=_arr([1, 1], "u32")),
        "too many graphs": {**good, "graphs": good["graphs"] * 17},
        "not a graph file": {**good, "kind": "heads"},
    }
    for what, doc in hostile.items():
        with pytest.raises(DataFileError, match="graph file"):
            check_graph_document(doc)
            pytest.fail(what)
    for what, doc in {"edge to a missing node": _doc(edges__dst=_arr([7], "u32")),
                      "NaN weight": _doc(edges__weight=_arr([math.nan], "f32")),
                      "NaN effect": _doc(nodes__effect=_arr([1.0, math.nan], "f32"))}.items():
        check_graph_document(doc)                    # sizes fine; the reader refuses the contents
        with pytest.raises(DataFileError, match="graph file"):
            read_graph_entry(doc["graphs"][0])
            pytest.fail(what)


# ----------------------------------------------------------------------------- the CLI


def test_graph_command_prints_paths_check_and_circuit_tracer_json(default_model, tmp_path):
    from circuit_tracer.frontend.graph_models import Model

    out = tmp_path / "graph.json"
    args = ["graph", "The capital of France is", "--target", " Paris", "--contrast", " London",
            "--json", str(out), "--check"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert re.search(r"T = \+\d+\.\d{4}  logit ' Paris' − ' London' at position 4", result.output)
    assert "strongest paths" in result.output and "ablation check" in result.output
    graph = json.loads(out.read_text())
    Model.model_validate(graph)
    ids = {n["node_id"] for n in graph["nodes"]}
    assert len(ids) == len(graph["nodes"]) and graph["links"]
    for link in graph["links"]:
        assert link["source"] in ids and link["target"] in ids and math.isfinite(link["weight"])
    # an existing file is never replaced without --force
    again = CliRunner().invoke(main, args)
    assert again.exit_code != 0 and "exists; pass --force" in again.output
    assert json.loads(out.read_text()) == graph


def test_graph_command_errors_are_one_line(default_model, tmp_path):
    for args, words in (([" Dursley"], "3 tokens"), ([" Paris", "--position", "9"], "out of range")):
        result = CliRunner().invoke(main, ["graph", "One day, Mr.", "--target", *args])
        assert result.exit_code == 1 and "Traceback" not in result.output, result.output
        error = result.output.rsplit("\r", 1)[-1].splitlines()[-1]    # after any loading bar
        assert error.startswith("Error: ") and words in error and result.output.endswith(error + "\n")
