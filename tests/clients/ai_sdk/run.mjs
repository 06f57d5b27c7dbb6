// The Vercel AI SDK as a client of troupe, driven by tests/test_ai_sdk.py.
//
//   node run.mjs '<job JSON>'      (or the job on stdin)
//
// A job:
//   {
//     "provider": "anthropic" | "openai" | "responses",
//                                          // @ai-sdk/anthropic, @ai-sdk/openai's .chat(model),
//                                          // or its default provider (the Responses API)
//     "baseURL": "http://127.0.0.1:PORT/v1",
//     "apiKey": "sk-test",
//     "model": "gpt-4o-mini",
//     "prompt": "...",                     // or "messages": [AI SDK model messages]
//     "system": "...",                     // optional
//     "tools": [{"name", "description"?, "parameters": JSON schema, "result"?: string}],
//                                          // ("{field}" in a result: that field of the call's input)
//     "stream": false,                     // streamText instead of generateText
//     "maxSteps": 1,                       // >1: tools with a "result" are executed (the
//                                          // result is returned as the tool's output) and
//                                          // the SDK sends it back, up to maxSteps calls
//     "maxOutputTokens": 300,
//     "timeoutMs": 30000
//   }
//
// It prints one JSON object on stdout:
//   { "text", "finishReason", "usage", "toolCalls": [{toolCallId, toolName, input,
//     invalid, error}], "steps": [...], "stream": {partTypes, toolInputDeltas,
//     textDeltas} (streamed jobs only), "requests": [{method, url, status, body}],
//     "warnings": [the SDK's warnings],
//     "error": null | {name, message, statusCode, responseBody, url, cause} }
// and exits 0; a job it cannot read exits 2.

import { createAnthropic } from "@ai-sdk/anthropic";
import { createOpenAI } from "@ai-sdk/openai";
import { generateText, jsonSchema, stepCountIs, streamText, tool } from "ai";

async function readJob() {
  if (process.argv[2]) return JSON.parse(process.argv[2]);
  const chunks = [];
  for await (const c of process.stdin) chunks.push(c);
  return JSON.parse(Buffer.concat(chunks).toString("utf8"));
}

function describeError(e) {
  if (e == null) return null;
  const out = { name: e.name ?? typeof e, message: String(e.message ?? e) };
  for (const k of ["statusCode", "responseBody", "url", "toolName", "toolInput"]) {
    if (e[k] !== undefined) out[k] = e[k];
  }
  if (e.cause) out.cause = String(e.cause.message ?? e.cause);
  return out;
}

function plainCall(c) {
  return {
    toolCallId: c.toolCallId,
    toolName: c.toolName,
    input: c.input,
    invalid: c.invalid === true,
    error: c.error ? describeError(c.error) : null,
  };
}

function plainStep(s) {
  return {
    text: s.text,
    finishReason: s.finishReason,
    rawFinishReason: s.rawFinishReason ?? null,
    usage: s.usage,
    toolCalls: (s.toolCalls ?? []).map(plainCall),
    toolResults: (s.toolResults ?? []).map((r) => ({ toolCallId: r.toolCallId, toolName: r.toolName, output: r.output })),
  };
}

async function main() {
  let job;
  try {
    job = await readJob();
  } catch (e) {
    process.stderr.write(`cannot read the job: ${e}\n`);
    process.exit(2);
  }

  // Every HTTP exchange the SDK makes, for the test's diagnostics.
  const requests = [];
  const recordingFetch = async (url, init = {}) => {
    const entry = { method: init.method ?? "GET", url: String(url), status: null, body: null };
    try {
      entry.body = typeof init.body === "string" ? JSON.parse(init.body) : null;
    } catch {
      entry.body = init.body;
    }
    requests.push(entry);
    const resp = await fetch(url, init);
    entry.status = resp.status;
    return resp;
  };

  const settings = { baseURL: job.baseURL, apiKey: job.apiKey, fetch: recordingFetch };
  let model;
  if (job.provider === "anthropic") {
    model = createAnthropic(settings)(job.model);
  } else if (job.provider === "openai") {
    model = createOpenAI(settings).chat(job.model);
  } else if (job.provider === "responses") {
    model = createOpenAI(settings)(job.model);
  } else {
    process.stderr.write(`unknown provider ${job.provider}\n`);
    process.exit(2);
  }

  const tools = {};
  for (const t of job.tools ?? []) {
    const def = { description: t.description ?? t.name, inputSchema: jsonSchema(t.parameters ?? { type: "object" }) };
    // "{city}" in a result is replaced by the call's input field `city`.
    if (t.result !== undefined) {
      def.execute = async (input) => t.result.replace(/\{(\w+)\}/g, (m, k) => (input?.[k] !== undefined ? String(input[k]) : m));
    }
    tools[t.name] = tool(def);
  }

  const args = {
    model,
    maxRetries: 0,
    abortSignal: AbortSignal.timeout(job.timeoutMs ?? 30000),
    stopWhen: stepCountIs(job.maxSteps ?? 1),
    ...(job.system !== undefined ? { system: job.system } : {}),
    ...(job.messages !== undefined ? { messages: job.messages } : { prompt: job.prompt }),
    ...(Object.keys(tools).length ? { tools } : {}),
    ...(job.maxOutputTokens !== undefined ? { maxOutputTokens: job.maxOutputTokens } : {}),
  };

  const out = { text: null, finishReason: null, usage: null, toolCalls: [], steps: [], requests, warnings: [], error: null };
  // The SDK's warnings go into the result (by default they go to stdout).
  globalThis.AI_SDK_LOG_WARNINGS = ({ warnings }) => {
    for (const w of warnings) out.warnings.push(w);
  };
  try {
    if (!job.stream) {
      const r = await generateText(args);
      out.text = r.text;
      out.finishReason = r.finishReason;
      out.usage = r.totalUsage ?? r.usage;
      out.toolCalls = r.toolCalls.map(plainCall);
      out.steps = r.steps.map(plainStep);
    } else {
      const streamErrors = [];
      const r = streamText({ ...args, onError: ({ error }) => streamErrors.push(error) });
      const seen = { partTypes: [], toolInputDeltas: {}, textDeltas: 0 };
      for await (const part of r.fullStream) {
        if (seen.partTypes[seen.partTypes.length - 1] !== part.type) seen.partTypes.push(part.type);
        if (part.type === "text-delta") seen.textDeltas += 1;
        if (part.type === "tool-input-delta") {
          seen.toolInputDeltas[part.id] = (seen.toolInputDeltas[part.id] ?? "") + part.delta;
        }
        if (part.type === "error") streamErrors.push(part.error);
      }
      out.stream = seen;
      if (streamErrors.length) {
        out.error = describeError(streamErrors[0]);
      } else {
        out.text = await r.text;
        out.finishReason = await r.finishReason;
        out.usage = await r.totalUsage;
        out.toolCalls = (await r.toolCalls).map(plainCall);
        out.steps = (await r.steps).map(plainStep);
      }
    }
  } catch (e) {
    out.error = describeError(e);
  }
  process.stdout.write(JSON.stringify(out) + "\n");
}

main().catch((e) => {
  process.stdout.write(JSON.stringify({ error: describeError(e) }) + "\n");
});
