from seekserve.output.stop import StopChecker


def feed_all(checker: StopChecker, deltas: list[str]) -> tuple[str, bool]:
    emitted = ""
    for delta in deltas:
        text, stopped = checker.feed(delta)
        emitted += text
        if stopped:
            return emitted, True
    return emitted + checker.flush(), False


def test_stop_string_split_across_deltas_is_excluded():
    checker = StopChecker(("</end>",))
    assert checker.feed("Hello </") == ("Hello ", False)  # "</" held back
    assert checker.feed("en") == ("", False)
    assert checker.feed("d> tail") == ("", True)


def test_held_text_is_released_when_it_cannot_start_a_stop():
    checker = StopChecker(("STOP",))
    assert checker.feed("ST") == ("", False)
    assert checker.feed("AR") == ("STAR", False)
    assert checker.flush() == ""


def test_earliest_of_several_stops_wins_and_flush_returns_held_text():
    assert feed_all(StopChecker(("b", "xyz")), ["axy", "zb"]) == ("a", True)
    assert feed_all(StopChecker(("xyz",)), ["ax", "y"]) == ("axy", False)
    assert feed_all(StopChecker(()), ["a", "b"]) == ("ab", False)


def test_held_suffix_matches_the_naive_definition():
    """The fast scan holds back exactly the longest end that begins a stop string."""
    import random

    rng = random.Random(0)
    for _ in range(2000):
        stops = tuple("".join(rng.choice("ab") for _ in range(rng.randint(1, 5))) for _ in "xy")
        text = "".join(rng.choice("abc") for _ in range(rng.randint(0, 8)))
        checker = StopChecker(stops)
        naive = max(
            (
                k
                for k in range(1, len(text) + 1)
                for s in stops
                if k < len(s) and s.startswith(text[-k:])
            ),
            default=0,
        )
        assert checker._holdable_suffix(text) == naive, (stops, text)
