"""``make bench`` (``python -m consumer.devkit.bench``): how fast, how frugal, how prompt.

Every figure is a ratio to a baseline measured in the same run, because timings on a shared
machine are noisy. Modules:

* :mod:`~consumer.devkit.bench.cli` -- command line, report, clean-up;
* :mod:`~consumer.devkit.bench.pure` -- the pure path in process (parse, map, report);
* :mod:`~consumer.devkit.bench.scenarios` -- measurements (a)-(e) on the embedded broker with
  the service, the passthrough and the emulator each in its own process;
* :mod:`~consumer.devkit.bench.rig` -- broker, emulator process, draining and watching;
* :mod:`~consumer.devkit.bench.passthrough` -- the minimal aiokafka consumer (the baseline
  of (a)), runnable as ``python -m consumer.devkit.bench.passthrough``;
* :mod:`~consumer.devkit.bench.kafka_io` -- producing backlogs, watching output topics;
* :mod:`~consumer.devkit.bench.procs` -- child processes and ``/proc`` figures;
* :mod:`~consumer.devkit.bench.events` -- the Didomi event mix and the mappings;
* :mod:`~consumer.devkit.bench.figures` -- rates, bounds, percentiles and the table (pure).
"""
