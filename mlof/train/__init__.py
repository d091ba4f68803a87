"""Training machinery behind ``mlof pretrain`` and ``mlof meta-train`` (the commands live in ``mlof.commands``).

    engine      fit(job, ...): steps, TensorBoard/metrics logging, atomic checkpoints, bit-identical resume
    runner      run_training(make_job, cfg): one process or one torchrun rank
    distributed torchrun support: process group, weighted gradient averaging, only rank 0 writes
The data plan they run on is ``mlof.data.loaders`` (seeded by ``(seed, step)``); seeding is ``mlof.seeding``,
run folders ``mlof.runs``, configurations ``mlof.config``.
"""
