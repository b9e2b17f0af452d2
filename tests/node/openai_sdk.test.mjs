// The official `openai` Node SDK against a live SeekServe whose base URL is in
// SEEKSERVE_BASE_URL (started by tests/clients/test_openai_node.py on the scripted models of
// tests/clients/conftest.py). Run alone: SEEKSERVE_BASE_URL=http://127.0.0.1:8000 node --test
import assert from "node:assert/strict";
import { test } from "node:test";

import OpenAI from "openai";

const baseURL = process.env.SEEKSERVE_BASE_URL;
if (!baseURL) throw new Error("set SEEKSERVE_BASE_URL to a running SeekServe");
const client = new OpenAI({ baseURL, apiKey: "sk-unused", maxRetries: 0 });

const getWeather = {
  type: "function",
  function: {
    name: "get_weather",
    description: "Get weather of a location, the user should supply a location first",
    parameters: {
      type: "object",
      properties: { location: { type: "string" } },
      required: ["location"],
    },
  },
};

test("create", async () => {
  const reply = await client.chat.completions.create({
    model: "deepseek-chat",
    messages: [{ role: "user", content: "remember the number seven" }],
  });
  assert.equal(reply.object, "chat.completion");
  assert.equal(reply.choices[0].message.content, "Noted: seven.");
  assert.equal(reply.choices[0].finish_reason, "stop");
  assert.ok(reply.usage.completion_tokens > 0);
});

test("stream", async () => {
  const stream = await client.chat.completions.create({
    model: "deepseek-chat",
    messages: [{ role: "user", content: "remember the number seven" }],
    stream: true,
    stream_options: { include_usage: true },
  });
  const pieces = [];
  let usage = null;
  for await (const chunk of stream) {
    if (chunk.choices.length) pieces.push(chunk.choices[0].delta.content ?? "");
    usage = chunk.usage ?? usage;
  }
  assert.ok(pieces.length > 3);
  assert.equal(pieces.join(""), "Noted: seven.");
  assert.ok(usage.total_tokens > 0);
});

test("tool call", async () => {
  const messages = [{ role: "user", content: "How's the weather in Hangzhou, Zhejiang?" }];
  const reply = await client.chat.completions.create({
    model: "deepseek-chat",
    messages,
    tools: [getWeather],
  });
  const message = reply.choices[0].message;
  assert.equal(reply.choices[0].finish_reason, "tool_calls");
  assert.equal(message.tool_calls.length, 1);
  const [call] = message.tool_calls;
  assert.equal(call.function.name, "get_weather");
  assert.deepEqual(JSON.parse(call.function.arguments), { location: "Hangzhou, Zhejiang" });
  messages.push(message, { role: "tool", tool_call_id: call.id, content: "24℃" });
  const answer = await client.chat.completions.create({
    model: "deepseek-chat",
    messages,
    tools: [getWeather],
  });
  assert.equal(answer.choices[0].message.content, "It is 24℃ in Hangzhou.");
});

test("tool call, streamed", async () => {
  const stream = await client.chat.completions.create({
    model: "deepseek-chat",
    messages: [{ role: "user", content: "How's the weather in Hangzhou, Zhejiang?" }],
    tools: [getWeather],
    stream: true,
  });
  let name = "";
  let args = "";
  let finish = null;
  for await (const chunk of stream) {
    for (const call of chunk.choices[0].delta.tool_calls ?? []) {
      name += call.function?.name ?? "";
      args += call.function?.arguments ?? "";
    }
    finish = chunk.choices[0].finish_reason ?? finish;
  }
  assert.equal(name, "get_weather");
  assert.deepEqual(JSON.parse(args), { location: "Hangzhou, Zhejiang" });
  assert.equal(finish, "tool_calls");
});

test("error", async () => {
  await assert.rejects(
    client.chat.completions.create({
      model: "deepseek-coder",
      messages: [{ role: "user", content: "Hi" }],
    }),
    (error) => error instanceof OpenAI.BadRequestError && /Model Not Exist/.test(error.message),
  );
});
