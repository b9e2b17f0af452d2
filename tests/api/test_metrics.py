"""/metrics parses as Prometheus text and its counters move as requests are served."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.api.helpers import CHAT, MODEL, chat_body, sse_events


def scrape(client) -> dict[str, float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.labels.get("model") == MODEL:
                samples[sample.name] = sample.value
    return samples


def test_counters_move_as_requests_are_served(make_client):
    client = make_client(num_blocks=256)
    before = scrape(client)
    assert before["seekserve_kv_blocks_total"] == 256
    assert before["seekserve_kv_blocks_used"] == 0
    assert before["seekserve_requests_admitted_total"] == 0
    system = {"role": "system", "content": "Answer briefly and precisely. " * 12}
    usages = []
    for question in ("First?", "Second?"):
        body = chat_body(messages=[system, {"role": "user", "content": question}], max_tokens=3)
        usages.append(client.post("/chat/completions", json=body).json()["usage"])
    after = scrape(client)
    assert after["seekserve_requests_admitted_total"] == 2
    assert after["seekserve_prompt_tokens_total"] == sum(u["prompt_tokens"] for u in usages)
    assert after["seekserve_generation_tokens_total"] == 6
    # the second request reused the shared system prompt: exact engine count, >= reported
    hit = after["seekserve_prefix_cache_hit_tokens_total"]
    assert hit >= usages[1]["prompt_cache_hit_tokens"] > 0
    assert after["seekserve_prefix_cache_miss_tokens_total"] == (
        after["seekserve_prompt_tokens_total"] - hit
    )
    assert after["seekserve_kv_blocks_used"] == 0
    assert after["seekserve_prefix_cache_blocks"] > 0
    assert after["seekserve_prefix_cache_bytes"] > 0
    assert after["seekserve_requests_running"] == after["seekserve_requests_waiting"] == 0


def scrape_labelled(client) -> dict[tuple[str, frozenset], float]:
    """Every sample, keyed by (name, labels)."""
    response = client.get("/metrics")
    assert response.status_code == 200
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def moved(before: dict, after: dict, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    return after.get(key, 0.0) - before.get(key, 0.0)


def test_request_metrics_move_by_exactly_the_requests_served(make_client):
    client = make_client()
    before = scrape_labelled(client)
    plain = client.post(CHAT, json=chat_body(max_tokens=3, ignore_eos=True)).json()["usage"]
    stream_body = chat_body(
        max_tokens=5, ignore_eos=True, stream=True, stream_options={"include_usage": True}
    )
    streamed = sse_events(client.post(CHAT, json=stream_body))[-1]["usage"]
    assert client.post(CHAT, json=chat_body(max_tokens=0)).status_code == 400
    assert client.get("/no/such/path").status_code == 404
    after = scrape_labelled(client)

    route = "/chat/completions"
    assert moved(before, after, "seekserve_requests_total", route=route, status="200") == 2
    assert moved(before, after, "seekserve_requests_total", route=route, status="400") == 1
    assert moved(before, after, "seekserve_requests_total", route="unmatched", status="404") == 1
    assert moved(before, after, "seekserve_request_duration_seconds_count", route=route) == 3
    completion_tokens = plain["completion_tokens"] + streamed["completion_tokens"]
    assert completion_tokens == 3 + 5
    model = {"model": MODEL}
    assert moved(before, after, "seekserve_generation_tokens_total", **model) == completion_tokens
    # the 400 never reached the engine: two first tokens, two finished generations
    assert moved(before, after, "seekserve_time_to_first_token_seconds_count", **model) == 2
    assert moved(before, after, "seekserve_e2e_request_latency_seconds_count", **model) == 2
    # one sample per token after each request's first
    assert moved(before, after, "seekserve_inter_token_latency_seconds_count", **model) == (
        completion_tokens - 2
    )
    ttft_sum = moved(before, after, "seekserve_time_to_first_token_seconds_sum", **model)
    e2e_sum = moved(before, after, "seekserve_e2e_request_latency_seconds_sum", **model)
    assert 0 < ttft_sum <= e2e_sum
