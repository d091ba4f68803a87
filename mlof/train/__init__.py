"""Pipelines behind the ``mlof`` command line: configuration, run folders, the training engine, DDP.

    config      typed defaults <- YAML recipe <- key=value overrides (OmegaConf); ModelConfig, DataConfig, LogConfig
    engine      fit(job, ...): steps, TensorBoard/metrics logging, atomic checkpoints, bit-identical resume
    sampling    the (seed, step) data plan shared by resume and multi-process runs
    distributed torchrun support: process group, weighted gradient averaging, only rank 0 writes
    seeding     seeds and RNG-state capture (weights_only-safe)
    rundir      the run folder runs/<name>/
    pretrain    supervised training (PretrainConfig, PretrainJob)
    meta_train  MLOF meta-training (MetaTrainConfig, MetaTrainJob)
    inference   meta-inference (``mlof adapt``) and ``mlof infer``
    runner      run_training(make_job, cfg): one process or one torchrun rank
Submodules are imported on use: ``import mlof.train`` is cheap.
"""
