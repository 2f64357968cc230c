"""The wobble: C1 through seven values, a frame after each settle, C1 back whatever happens.

stack.wobble (the one function that changes C1 in normal work), sources (camera over the
protocol, or a screen region with mss), c1_memory (the durable record and the recovery at
start), report (spots and the walk, for people), cli (`temalign wobble`). docs/wobble.md."""
