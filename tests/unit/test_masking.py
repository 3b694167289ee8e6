"""Secret values masked out of output: whole, split across chunks, overlapping, and not
masking what only looks like the start of a value."""

import pytest

from tryfleet.masking import StreamMasker, mask, masked_window, partial_tail

SECRET = b"hunter22"


def stream(values, chunks):
    m = StreamMasker(values)
    return b"".join(m.feed(c) for c in chunks) + m.flush()


def test_every_occurrence_is_masked_keeping_the_length():
    assert mask(b"a hunter22 b hunter22", [SECRET]) == b"a ******** b ********"


def test_overlapping_occurrences_are_all_masked():
    assert mask(b"abababa", [b"abab"]) == b"******a"  # at 0 and at 2


def test_two_values_one_inside_the_other_are_both_masked():
    assert mask(b"xx longsecret yy secret", [b"longsecret", b"secret"]) == \
        b"xx ********** yy ******"


def test_no_values_changes_nothing():
    assert mask(b"hunter22", []) == b"hunter22"


@pytest.mark.parametrize("cut", range(1, len(b"pass: hunter22\n")))
def test_a_value_split_across_two_chunks_is_masked(cut):
    data = b"pass: hunter22\n"
    assert stream([SECRET], [data[:cut], data[cut:]]) == b"pass: ********\n"


def test_a_value_split_into_single_bytes_is_masked():
    assert stream([SECRET], [bytes([b]) for b in b"<hunter22>"]) == b"<********>"


def test_a_held_back_start_that_never_completes_comes_out_at_the_end():
    assert stream([SECRET], [b"hunt", b"er2"]) == b"hunter2"


def test_a_start_that_turns_out_different_is_released_with_the_next_chunk():
    m = StreamMasker([SECRET])
    assert m.feed(b"say hun") == b"say "
    assert m.feed(b"gry") == b"hungry"


def test_the_end_of_a_masked_value_is_never_held_back_and_shown_raw():
    # "abab" ends in "ab", the start of another "abab": it was masked, not held
    assert stream([b"abab"], [b"xabab", b"x"]) == b"x****x"


def test_a_one_byte_value_holds_nothing_back():
    m = StreamMasker([b"z"])
    assert m.feed(b"zaz") == b"*a*"


def test_partial_tail_is_the_longest_start_of_a_value():
    assert partial_tail(b"xxhunte", [SECRET, b"hx"]) == 5


def test_a_window_read_from_before_its_offset_masks_a_value_crossing_it():
    data = b"..hunter22.."
    # offset 5 is inside the value: read from 0, the value is seen whole
    assert masked_window(data, 0, 5, [SECRET], done=True) == b"*****.."


def test_a_live_window_stops_before_what_may_be_the_start_of_a_value():
    assert masked_window(b"abc hunt", 0, 2, [SECRET], done=False) == b"c "


def test_any_chunking_gives_what_masking_the_whole_gives():
    import random

    rng = random.Random(7)
    values = [b"abcab", b"cabd", b"xyz1"]
    for _ in range(300):
        data = bytes(rng.choice(b"abcdxyz1") for _ in range(rng.randint(0, 40)))
        cuts = sorted(rng.sample(range(len(data) + 1), min(len(data) + 1, rng.randint(0, 6))))
        chunks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
        assert stream(values, chunks) == mask(data, values), (data, cuts)


def test_output_cut_in_the_middle_of_a_value_masks_the_part_it_kept():
    assert mask(b"token: hunt", [b"hunter22"], cut=True) == b"token: ****"


def test_output_whose_start_was_cut_off_masks_the_end_of_a_value_it_begins_with():
    assert mask(b"er22 done", [b"hunter22"], cut=True) == b"**** done"


def test_output_not_cut_keeps_an_end_that_only_looks_like_the_start_of_a_value():
    assert mask(b"token: hunt", [b"hunter22"]) == b"token: hunt"
