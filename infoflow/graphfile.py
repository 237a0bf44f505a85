"""Attribution graphs (paths.Graph) <-> the graph sidecar and circuit-tracer's graph file.

The sidecar, `data/graph/<id>.<hash>.msgpack` (docs/data-format.md), holds one prompt's graphs on
one model: node effects over every node, the pruned nodes and edges, the per-source split of
the kept nodes, the strongest paths, and the ablation check of the first graph. Arrays use
datafile.encode_array (float32, never quantized: every number here is quotable).
"""
from __future__ import annotations

import math

import numpy as np

from .datafile import DataFileError, decode_array, encode_array

GRAPH_SCHEMA = 1
MAX_NODES = 1 << 20          # bounds a reader checks before it allocates (the viewer does too)
MAX_EDGES = 1 << 22
MAX_GRAPHS = 16
BY_SOURCE_NODES = 128    # kept nodes whose per-source split is stored (the largest |effect|)
STORED_EDGES = 3000      # edges stored per graph: the largest |weight| of the pruned graph's


def graph_entry(g) -> dict:
    """One paths.Graph -> a msgpack-ready dict."""
    n = g.nodes
    kept = len(n["kind"]) - 1                                   # the target is last
    P = len(g.tokens)
    layer = np.where(n["kind"] == 4, g.heads.shape[0], np.maximum(n["layer"], 0))
    entry = {
        "target": {"id": int(g.target), "text": g.target_text},
        "contrast": None if g.contrast is None else {"id": int(g.contrast), "text": g.contrast_text},
        "position": int(g.position), "value": float(g.value), "frozen_value": float(g.frozen_value),
        # None where it is undefined: a frozen T of exactly 0
        "completeness": float(g.completeness) if math.isfinite(g.completeness) else None, "node_threshold": float(g.node_threshold),
        "edge_threshold": float(g.edge_threshold), "bias": float(g.bias),
        "embed": encode_array(g.embed, "f32"), "heads": encode_array(g.heads, "f32"),
        "mlp": encode_array(g.mlp, "f32"),
        "direct": {"embed": float(g.direct["embed"][g.position]),
                   "heads": encode_array(g.direct["heads"][:, :, g.position], "f32"),
                   "mlp": encode_array(g.direct["mlp"][:, g.position], "f32")},
        "nodes": {"kind": encode_array(n["kind"].astype(np.uint8), "u8"),
                  "layer": encode_array(layer.astype(np.uint16), "u16"),
                  "head": encode_array(np.maximum(n["head"], 0).astype(np.uint16), "u16"),
                  "position": encode_array(np.clip(n["position"], 0, P - 1).astype(np.uint16), "u16"),
                  "effect": encode_array(n["effect"].astype(np.float32), "f32")},
        "edges": _stored_edges(g.edges),
        "edges_pruned": int(len(g.edges["weight"])),                      # before the sidecar's cap
        "edges_stored_share": _stored_share(g.edges),
        "paths": [{"value": float(v), "nodes": [int(i) for i in path]} for v, path in g.paths],
    }
    if g.heads_by_source is not None:     # the per-source split of the largest kept nodes
        which = np.sort(np.argsort(-np.abs(n["effect"][:kept]), kind="stable")[:BY_SOURCE_NODES])
        rows = [_node_split(g, int(i)) for i in which]
        entry["by_source"] = {"node": encode_array(which.astype(np.uint32), "u32"),
                              "values": encode_array(np.stack(rows).astype(np.float32), "f32"),
                              "floor": float(np.abs(n["effect"][which]).min()) if len(which) else 0.0}
    if g.check is not None:
        entry["check"] = g.check.to_dict()
    return entry


def _stored_edges(edges: dict) -> dict:
    """The pruned graph's edges, at most STORED_EDGES of them (the largest |weight|); the entry
    also says how many there were and the share of their Σ|weight| stored, so that a view can
    say what it leaves out."""
    keep = stored_edge_index(edges)
    return {"src": encode_array(edges["src"][keep].astype(np.uint32), "u32"),
            "dst": encode_array(edges["dst"][keep].astype(np.uint32), "u32"),
            "weight": encode_array(edges["weight"][keep].astype(np.float32), "f32")}


def stored_edge_index(edges: dict) -> np.ndarray:
    """Which of the pruned graph's edges the sidecar stores, in their order."""
    return np.sort(np.argsort(-np.abs(edges["weight"]), kind="stable")[:STORED_EDGES])


def _stored_share(edges: dict) -> float:
    w = np.abs(edges["weight"])
    total = float(w.sum())
    return float(w[stored_edge_index(edges)].sum() / total) if total else 1.0


def _node_split(g, i: int) -> np.ndarray:
    """Node i's effect by source (G,): heads and MLPs from the engine's split, an embedding all
    from its own source, the bias node all from the bias source."""
    G = len(g.sources)
    kind, l, h, p = (int(g.nodes[k][i]) for k in ("kind", "layer", "head", "position"))
    if kind == 1:
        return g.heads_by_source[l, h, p]
    if kind == 2:
        return g.mlp_by_source[l, p]
    row = np.zeros(G)
    if kind == 0:
        row[int(g.groups[p])] = g.nodes["effect"][i]
    elif kind == 3:
        row[G - 1] = g.nodes["effect"][i]
    return row


def graph_document(graphs: list, *, prompt_id: str = "", model: dict | None = None) -> dict:
    """A prompt's graphs on one model -> the sidecar document."""
    g0 = graphs[0]
    return {"schema": GRAPH_SCHEMA, "kind": "infoflow-graph", "prompt": prompt_id,
            "model": (model or g0.model).get("id", ""), "tokens": list(g0.tokens),
            "sources": list(g0.sources), "head_labels": list(g0.head_labels),
            "layers": int(g0.heads.shape[0]), "graphs": [graph_entry(g) for g in graphs]}


def check_graph_document(doc) -> None:
    """The sizes and types a reader relies on, checked before anything is allocated."""
    def need(ok, what):
        if not ok:
            raise DataFileError(f"graph file: {what}")

    need(isinstance(doc, dict) and doc.get("kind") == "infoflow-graph", "not an infoflow graph file")
    need(doc.get("schema") == GRAPH_SCHEMA, f"unknown schema {doc.get('schema')!r}")
    graphs = doc.get("graphs")
    need(isinstance(graphs, list) and 0 < len(graphs) <= MAX_GRAPHS, "'graphs' must hold 1..16 graphs")
    P = len(doc.get("tokens") or [])
    need(0 < P <= 4096, "'tokens' must hold 1..4096 tokens")
    for i, e in enumerate(graphs):
        need(isinstance(e, dict), f"graphs[{i}] is not a map")
        for key in ("value", "frozen_value", "completeness"):
            if key == "completeness" and e.get(key) is None:
                continue
            need(isinstance(e.get(key), (int, float)) and math.isfinite(e[key]), f"graphs[{i}].{key} is not a finite number")
        nodes, edges = e.get("nodes") or {}, e.get("edges") or {}
        n = _length(nodes.get("kind"))
        m = _length(edges.get("src"))
        need(0 < n <= MAX_NODES, f"graphs[{i}].nodes: {n} nodes (1..{MAX_NODES})")
        need(0 <= m <= MAX_EDGES, f"graphs[{i}].edges: {m} edges (at most {MAX_EDGES})")
        for key in ("layer", "head", "position", "effect"):
            need(_length(nodes.get(key)) == n, f"graphs[{i}].nodes.{key} does not have {n} entries")
        for key in ("dst", "weight"):
            need(_length(edges.get(key)) == m, f"graphs[{i}].edges.{key} does not have {m} entries")


def _length(arr) -> int:
    if not isinstance(arr, dict) or not isinstance(arr.get("shape"), list) or len(arr["shape"]) != 1:
        return -1
    n = arr["shape"][0]
    return n if isinstance(n, int) else -1


def read_graph_entry(e: dict) -> dict:
    """A checked entry's arrays, decoded; edges that name a missing node, or a non-finite
    weight, are refused."""
    out = {k: decode_array(v) for k, v in e["nodes"].items()}
    edges = {k: decode_array(v) for k, v in e["edges"].items()}
    n = len(out["kind"])
    if len(edges["src"]) and (edges["src"].max() >= n or edges["dst"].max() >= n):
        raise DataFileError("graph file: an edge names a node that does not exist")
    if not np.isfinite(edges["weight"]).all() or not np.isfinite(out["effect"]).all():
        raise DataFileError("graph file: a weight or effect is not a finite number")
    return {"nodes": out, "edges": edges}


# ----------------------------------------------------------------------------- circuit-tracer


def to_circuit_tracer(g, *, slug: str = "infoflow-graph") -> dict:
    """The pruned graph in circuit-tracer's graph-file schema (frontend/graph_models.Model,
    circuit-tracer 0.5.0), so that its viewer and tools read it.

    Mapping (docs/graph.md): embeddings are "embedding" nodes (layer "E"); heads and MLPs are
    feature nodes ("cross layer transcoder" is the type circuit-tracer's viewer draws as a
    feature; clerp names what it really is), feature = cantor(layer, index) with index h for a
    head and H' for the MLP; the bias node is an "embedding" at position 0 named "bias"; the
    target is a "logit" node. `activation` holds the node's effect on T. Links are the kept edges.
    """
    n, Hx = g.nodes, g.heads.shape[1]
    L = g.heads.shape[0]
    ids, nodes = [], []
    for i in range(len(n["kind"])):
        kind, l, h, p = (int(n[k][i]) for k in ("kind", "layer", "head", "position"))
        eff = float(n["effect"][i])
        if kind == 0:
            node_id = f"E_{int(g.token_ids[p])}_{p}"
            nodes.append(dict(node_id=node_id, feature=p, layer="E", ctx_idx=p, feature_type="embedding",
                              jsNodeId=f"E_{p}-{p}", clerp=f"embedding {g.tokens[p]!r}", activation=eff))
        elif kind == 3:
            node_id = "E_bias_0"
            nodes.append(dict(node_id=node_id, feature=-1, layer="E", ctx_idx=0, feature_type="embedding",
                              jsNodeId="E_bias-0", clerp="bias (no token)", activation=eff))
        elif kind == 4:
            node_id = f"{L + 1}_{g.target}_{p}"
            label = repr(g.target_text) + (f" − {g.contrast_text!r}" if g.contrast is not None else " (demeaned)")
            nodes.append(dict(node_id=node_id, feature=int(g.target), layer=str(L + 1), ctx_idx=p,
                              feature_type="logit", is_target_logit=True, jsNodeId=f"L_{g.target}-{p}",
                              clerp=f"Output {label} (T={g.value:.3f})", activation=eff))
        else:
            idx = h if kind == 1 else Hx
            node_id = f"{l}_{idx}_{p}"
            what = f"attention head {l}.{g.head_labels[h]}" if kind == 1 else f"MLP {l}"
            nodes.append(dict(node_id=node_id, feature=(l + idx) * (l + idx + 1) // 2 + idx, layer=str(l),
                              ctx_idx=p, feature_type="cross layer transcoder", jsNodeId=f"{l}_{idx}-{p}",
                              clerp=f"{what} at {g.tokens[p]!r}", activation=eff))
        ids.append(node_id)
    links = [{"source": ids[s], "target": ids[d], "weight": float(w)}
             for s, d, w in zip(g.edges["src"].tolist(), g.edges["dst"].tolist(), g.edges["weight"].tolist())]
    meta = {"slug": slug, "scan": g.model.get("id", "infoflow"), "transcoder_list": [],
            "prompt_tokens": list(g.tokens), "prompt": "".join(g.tokens),
            "node_threshold": float(g.node_threshold), "schema_version": 1,
            "info": {"generator": "infoflow", "value": g.value, "completeness": g.completeness,
                     "edge_threshold": g.edge_threshold}}
    return {"metadata": meta,
            "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""},
            "nodes": nodes, "links": links}
