"""The other runtimes' sessions, set up one way for every benchmark: ONNX Runtime on n threads, and its
per-node times from its own profiler.

Threads: intra_op_num_threads n, inter_op 1, sequential execution (one node at a time, as cyconv's
predictor runs its ops), the CPU execution provider (its best kernels for this CPU: ONNX Runtime has no
ISA switch).
"""

import json
import statistics
from pathlib import Path


def ort_session(onnx_path, threads, profile_prefix=None):
    """An onnxruntime.InferenceSession of onnx_path on `threads` threads; with profile_prefix, profiling
    on (every run's per-node times go to a JSON file named from that prefix: ort_node_times reads it)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = str(profile_prefix)
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


def ort_node_times(session, skip=0, statistic=statistics.median):
    """Ends a profiling session's profile: {node name: seconds per run, the statistic (median, or min)
    of its runs}, leaving out each node's first `skip` runs (warm-up). The names are ONNX Runtime's
    after its graph optimisations: a fused node is named after one of the nodes it replaced (with a
    suffix such as "_nchwc" for its blocked-layout rewrite), and layout reorders appear as nodes of
    their own."""
    events = json.loads(Path(session.end_profiling()).read_text())
    per_node = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_node.setdefault(e["name"][:-len("_kernel_time")], []).append(e["dur"] * 1e-6)
    return {node: statistic(d[skip:] or d) for node, d in per_node.items()}
