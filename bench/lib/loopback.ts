// The runtime's own floor for a fan-out, measured in the same run as the propagation section: one
// write of a frame-sized buffer to each of N connected loopback TCP sockets, from one Deno event
// loop, without WebSocket framing or a Realtime endpoint. The receiving ends are idle while the
// writes go out (they drain afterwards), as the endpoint's sends never wait for the devices to read.
// What is left between this and device B's figure is the endpoint's own work per socket; what this
// figure itself costs is the kernel's loopback send on this machine.

async function writeAll(conn: Deno.Conn, bytes: Uint8Array): Promise<void> {
  let written = 0;
  while (written < bytes.length) written += await conn.write(bytes.subarray(written));
}

/** Milliseconds per round from the first write to the last one completing, one value per round. */
export async function loopbackFanoutFloor(sockets: number, bytes: number, rounds: number): Promise<number[]> {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  const readers: Deno.TcpConn[] = [];
  const writers: Deno.TcpConn[] = [];
  try {
    for (let i = 0; i < sockets; i++) {
      const [reader, writer] = await Promise.all([
        Deno.connect({ hostname: "127.0.0.1", port }),
        listener.accept() as Promise<Deno.TcpConn>,
      ]);
      reader.setNoDelay(true);
      writer.setNoDelay(true);
      readers.push(reader);
      writers.push(writer);
    }
    const frame = new Uint8Array(bytes).fill(0x78);
    const sink = new Uint8Array(bytes);
    const times: number[] = [];
    for (let round = 0; round < rounds; round++) {
      const started = performance.now();
      await Promise.all(writers.map((w) => writeAll(w, frame)));
      times.push(performance.now() - started);
      for (const reader of readers) {
        for (let got = 0; got < bytes;) {
          const n = await reader.read(sink.subarray(0, bytes - got));
          if (n === null) throw new Error("loopback floor: a socket closed early");
          got += n;
        }
      }
    }
    return times;
  } finally {
    for (const conn of [...readers, ...writers]) {
      try {
        conn.close();
      } catch { /* already closed */ }
    }
    listener.close();
  }
}
