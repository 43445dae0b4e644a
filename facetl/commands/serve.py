"""`facetl serve RUN...`: the web page and HTTP API of facetl/serve/ on one or more runs."""
from __future__ import annotations

from facetl.flags import add_min_face, add_runtime_flags, whole_number

NAME = "serve"
SUMMARY = "a web page and HTTP API that box every face in a photo and label it with each run"
EXAMPLES = [("facetl serve runs/smile", "http://127.0.0.1:8000/"),
            ("facetl serve runs/smile --engine onnx --port 0", "the ONNX model, on any free port")]


def add_arguments(parser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run folders (or, with --engine onnx, .onnx files); "
                                                              "every face gets every run's answer")
    model = parser.add_argument_group("model")
    model.add_argument("--engine", choices=["torch", "onnx"], default="torch",
                       help="torch (default): each run's best.pt; onnx: RUN/model.onnx from facetl export")
    model.add_argument("--threads", type=whole_number(1, 256), default=1, metavar="N",
                       help="CPU threads of the one inference worker (default 1: steady on a shared or small CPU; "
                            "more helps large models on an idle machine)")
    add_min_face(model, None, "smallest face side that counts, in photo pixels (default: the runs' smallest, or 20)")
    model.add_argument("--smooth", type=float, default=0.5, metavar="SECONDS",
                       help="camera mode: each face keeps its track from frame to frame and its labels are smoothed "
                            "over time, an exponential moving average with this time constant, as predict --smooth "
                            "does for a video (default 0.5; 0: each frame's own labels)")
    add_network_flags(parser.add_argument_group("network"))
    add_runtime_flags(parser)


def add_network_flags(network) -> None:
    network.add_argument("--host", default="127.0.0.1",
                         help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0: every network)")
    network.add_argument("--port", type=whole_number(0, 65_535), default=8000,
                         help="TCP port (default 8000; 0: any free port)")
    network.add_argument("--allowed-hosts", type=lambda text: tuple(n.strip() for n in text.split(",")), default=(),
                         metavar="NAMES", help="comma-separated host names requests may address besides 127.0.0.1, "
                                               "localhost and --host (e.g. myserver.lan; '*': any; other names get "
                                               "400: no DNS rebinding)")
    network.add_argument("--max-upload-mb", type=float, default=20.0, metavar="MB",
                         help="largest request body accepted, in MiB; larger ones get 413 (default 20)")
    network.add_argument("--header-timeout", type=float, default=10.0, metavar="SECONDS",
                         help="a connection that has not sent a whole request head in this time is closed (default 10)")
    network.add_argument("--max-connections", type=whole_number(1, 1_000_000), metavar="N",
                         help="open connections at most; a new one beyond closes the one that has waited longest "
                              "for its client (default 256, fewer when ulimit -n is low)")
    network.add_argument("--max-streams", type=whole_number(1, 1000), default=4, metavar="N",
                         help="camera streams (the page's camera mode) open at once; one more is closed with code "
                              "1013, try again later (default 4)")


def run(args) -> int:
    from facetl.serve import ServeOptions, serve

    return serve(args.runs, ServeOptions(args.host, args.port, args.engine, args.max_upload_mb, args.device,
                                         args.precision, args.threads, args.min_face, args.header_timeout,
                                         args.max_connections, args.allowed_hosts, args.max_streams, args.smooth))
