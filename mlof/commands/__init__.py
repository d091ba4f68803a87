"""The ``mlof`` subcommands, one module each, every one with its configuration dataclass next to it.

    pretrain    supervised training (PretrainConfig, PretrainJob)
    meta_train  MLOF meta-training (MetaTrainConfig, MetaTrainJob)
    adapt       meta-inference: test-time adaptation per pair or online (AdaptConfig, run_adapt)
    infer       flow for frames, folders, videos and datasets (InferConfig, run_infer)
    evaluate    the RAFT evaluation protocol, optionally after adaptation (EvaluateConfig, evaluate, run_evaluate)
    bench       speed and peak memory (BenchConfig, run_bench)
    synth       a synthetic data set on disk (add_arguments, run)
    models      the networks with their parameter counts (ModelsConfig, run_models)
    weights     the registry of official checkpoints (WeightsConfig, run_weights)
    fetch       download official checkpoints (FetchConfig, run_fetch)
    export      ONNX export (ExportConfig, run_export)
Shared by them: ``setup`` (the network and datasets a configuration names) and ``sources`` (the frames of
``adapt`` / ``infer``). ``mlof.cli`` parses the command line and dispatches to these modules.
"""
