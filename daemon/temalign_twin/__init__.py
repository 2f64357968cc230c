"""The digital twin of the column: what stands in for a microscope in the demo, the tests, the
benchmarks and the training data (shared/design/twin.md).

A package of its own beside the service (`temalign`): the daemon never imports it. It holds the
twin's physics and hardware (model, render, drift, hardware, settings, presets, display), its
protocol v1 server with fault injection (service, faulty_server, faults), the live-view window
for the screen-capture path (viewer), and `temalign twin` / `temalign demo` (cli, demo), which
reach the `temalign` command through its `temalign.commands` entry points."""
