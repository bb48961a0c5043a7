// The client's SSE parser and refresh gate on their own, in Node (no browser): the parser
// against the HTML standard's event-stream rules, the gate against a mocked clock.

import { test } from "node:test";
import assert from "node:assert/strict";
import { EventStreamParser, RefreshGate } from "../static/runwire.mjs";

/** Parses `chunks` in order; returns the events, the retry values and the parser. */
function parse(chunks) {
  const events = [];
  const retries = [];
  const parser = new EventStreamParser((e) => events.push(e), (ms) => retries.push(ms));
  for (const chunk of chunks) parser.feed(chunk);
  return { events, retries, parser };
}

// What runwire sends for a run (docs/api.md), with its keep-alive comment.
const RUN_STREAM =
  "retry: 1000\n\n" +
  'event: snapshot\ndata: {"id":42,"status":"running","version":5}\nid: 5\n\n' +
  ": keep-alive\n\n" +
  'event: update\ndata: {"id":42,"status":"completed","version":6}\nid: 6\n\n' +
  'event: end\ndata: {"reason":"terminal"}\n\n';

const RUN_EVENTS = [
  { type: "snapshot", data: '{"id":42,"status":"running","version":5}', lastEventId: "5" },
  { type: "update", data: '{"id":42,"status":"completed","version":6}', lastEventId: "6" },
  { type: "end", data: '{"reason":"terminal"}', lastEventId: "6" },
];

test("runwire's stream: events, ids and retry", () => {
  const { events, retries, parser } = parse([RUN_STREAM]);
  assert.deepEqual(events, RUN_EVENTS);
  assert.deepEqual(retries, [1000]);
  assert.equal(parser.lastEventId, "6", "an event without id: keeps the last one");
});

test("split anywhere: every cut of the stream into two or three chunks gives the same events", () => {
  for (let i = 0; i <= RUN_STREAM.length; i++) {
    assert.deepEqual(parse([RUN_STREAM.slice(0, i), RUN_STREAM.slice(i)]).events, RUN_EVENTS, `cut at ${i}`);
    const j = Math.min(RUN_STREAM.length, i + 7);
    assert.deepEqual(parse([RUN_STREAM.slice(0, i), RUN_STREAM.slice(i, j), RUN_STREAM.slice(j)]).events, RUN_EVENTS);
  }
  // One character at a time, too.
  assert.deepEqual(parse(RUN_STREAM.split("")).events, RUN_EVENTS);
});

test("bytes split inside a UTF-8 character decode to the same data (the reader's TextDecoder)", () => {
  const bytes = new TextEncoder().encode('event: update\ndata: {"name":"Zürich ✓ 😀"}\n\n');
  for (let i = 1; i < bytes.length; i++) {
    const decoder = new TextDecoder();
    const { events } = parse([decoder.decode(bytes.slice(0, i), { stream: true }), decoder.decode(bytes.slice(i), { stream: true }), decoder.decode()]);
    assert.deepEqual(events.map((e) => e.data), ['{"name":"Zürich ✓ 😀"}'], `cut at byte ${i}`);
  }
});

test("CRLF, CR and LF all end lines, also mixed, and a CRLF split between chunks is one line end", () => {
  const expected = [{ type: "update", data: "a\nb", lastEventId: "7" }];
  assert.deepEqual(parse(["event: update\r\ndata: a\r\ndata: b\r\nid: 7\r\n\r\n"]).events, expected);
  assert.deepEqual(parse(["event: update\rdata: a\rdata: b\rid: 7\r\r"]).events, expected);
  assert.deepEqual(parse(["event: update\ndata: a\r\ndata: b\rid: 7\n\r\n"]).events, expected);
  // CR at the end of one chunk, LF at the start of the next: not an empty line in between.
  assert.deepEqual(parse(["event: update\r", "\ndata: a\r", "\ndata: b\r", "\nid: 7\r", "\n\r", "\n"]).events, expected);
  // A lone CR at a chunk's end really ends the line even if the next chunk starts otherwise.
  assert.deepEqual(parse(["data: a\r", "data: b\r", "\r"]).events.map((e) => e.data), ["a\nb"]);
});

test("a BOM at the very start is skipped once; anywhere else it is data", () => {
  assert.deepEqual(parse(["\uFEFFdata: x\n\n"]).events.map((e) => e.data), ["x"]);
  assert.deepEqual(parse(["", "\uFEFFdata: x\n\n"]).events.map((e) => e.data), ["x"], "after an empty chunk");
  // A second BOM makes the first line's field "\uFEFFdata", which is no field at all.
  assert.deepEqual(parse(["\uFEFF\uFEFFdata: x\n\n"]).events, []);
  assert.deepEqual(parse(["data: \uFEFFx\n\n"]).events.map((e) => e.data), ["\uFEFFx"]);
});

test("id: persists across events, is set even by an event without data, and an id with NUL is ignored", () => {
  const { events, parser } = parse(["id: 3\ndata: a\n\n", "data: b\n\n", "id: 4\n\n", "data: c\n\n", "id: 9\u0000\ndata: d\n\n", "id\ndata: e\n\n"]);
  assert.deepEqual(
    events.map((e) => [e.data, e.lastEventId]),
    [
      ["a", "3"],
      ["b", "3"],
      ["c", "4"],
      ["d", "4"],
      ["e", ""],
    ],
  );
  assert.equal(parser.lastEventId, "");
  // A parser that resumes a stream starts from the id it is given.
  const resumed = [];
  new EventStreamParser((e) => resumed.push(e.lastEventId), null, "12.2").feed("data: x\n\n");
  assert.deepEqual(resumed, ["12.2"]);
});

test("retry: only ASCII digits count", () => {
  const { retries, events } = parse(["retry: 5000\n", "retry: 1x\n", "retry:\n", "retry: -1\n", "retry: 1.5\n", "retry:250\n", "retry: 10000\n\n"]);
  assert.deepEqual(retries, [5000, 250, 10000]);
  assert.deepEqual(events, [], "retry alone dispatches nothing");
});

test("fields: one space after the colon is dropped, comments and unknown fields are ignored, event types reset", () => {
  const { events } = parse([":comment\n", "data:x\n", "data:  y\n", "data\n", "foo: bar\n", "event: custom\n\n", "data: z\n\n"]);
  assert.deepEqual(events, [
    { type: "custom", data: "x\n y\n", lastEventId: "" },
    { type: "message", data: "z", lastEventId: "" },
  ]);
});

test("an event cut off by the end of the stream is dropped", () => {
  const { events, parser } = parse(["data: done\n\n", "event: update\ndata: half"]);
  parser.end();
  parser.feed("\n\n"); // a later reconnect's first bytes do not complete it
  assert.deepEqual(events.map((e) => e.data), ["done"]);
});

test("the refresh gate: at most one fire per interval, the first right after the burst, the rest at the interval's end", (t) => {
  t.mock.timers.enable({ apis: ["setTimeout"], now: 0 });
  let now = 0;
  const fires = [];
  const gate = new RefreshGate(() => fires.push(now), { interval: 250, now: () => now });
  const advance = (ms) => {
    now += ms;
    t.mock.timers.tick(ms);
  };
  gate.trigger();
  gate.trigger(); // the same task: one burst
  assert.deepEqual(fires, [], "not within the task that triggered");
  t.mock.timers.tick(0);
  assert.deepEqual(fires, [0], "the first burst fires right after it");
  // A burst of 20 triggers over 200 ms: one more fire, at 250 ms.
  for (let i = 0; i < 20; i++) {
    advance(10);
    gate.trigger();
  }
  assert.deepEqual(fires, [0]);
  advance(50);
  assert.deepEqual(fires, [0, 250]);
  // Quiet afterwards: nothing more.
  advance(1000);
  assert.deepEqual(fires, [0, 250]);
  // Later on, a single trigger fires at once again.
  gate.trigger();
  t.mock.timers.tick(0);
  assert.deepEqual(fires, [0, 250, 1250]);
  // A long burst: one fire per interval, never two within 250 ms.
  for (let i = 0; i < 100; i++) {
    advance(10);
    gate.trigger();
  }
  advance(250);
  const gaps = fires.slice(1).map((f, i) => f - fires[i]);
  assert.ok(gaps.every((g) => g >= 250), `gaps ${gaps}`);
  assert.deepEqual(fires.slice(3), [1500, 1750, 2000, 2250, 2500], "one every 250 ms through a second of triggers, the last at its end");
});

test("the refresh gate: deferred while hidden or busy, then exactly one fire", (t) => {
  t.mock.timers.enable({ apis: ["setTimeout"], now: 0 });
  let now = 0;
  let deferred = true;
  const fires = [];
  const gate = new RefreshGate(() => fires.push(now), { interval: 250, now: () => now, deferred: () => deferred });
  const advance = (ms) => {
    for (let i = 0; i < ms; i += 10) {
      now += 10;
      t.mock.timers.tick(10);
    }
  };
  for (let i = 0; i < 10; i++) {
    gate.trigger();
    advance(300);
  }
  assert.deepEqual(fires, [], "nothing fires while deferred");
  assert.equal(gate.pending, true);
  deferred = false;
  advance(250);
  assert.equal(fires.length, 1, "once the deferral is over, one fire");
  advance(2000);
  assert.equal(fires.length, 1, "and nothing more");
  // Deferral without anything pending costs nothing: no fire when it ends.
  deferred = true;
  advance(1000);
  deferred = false;
  advance(1000);
  assert.equal(fires.length, 1);
  // cancel() drops a pending refresh.
  deferred = true;
  gate.trigger();
  gate.cancel();
  deferred = false;
  advance(1000);
  assert.equal(fires.length, 1);
});
