import asyncio

from streaming.client.requests import Request, RequestBook


def make(book: RequestBook, n: int) -> list[Request]:
    loop = asyncio.get_running_loop()
    requests = [Request(i, f"frame-{i}", loop.create_future()) for i in range(1, n + 1)]
    for request in requests:
        book.add(request)
    return requests


def drain(book: RequestBook) -> list[int]:
    sent = []
    while (request := book.next_to_send()) is not None:
        sent.append(request.id)
    return sent


async def test_no_more_than_the_window_is_out_at_once_and_a_reply_frees_a_slot():
    book = RequestBook(window=3)
    make(book, 5)
    assert drain(book) == [1, 2, 3]
    assert book.answered(2).id == 2
    assert drain(book) == [4]
    assert book.answered("2") is None and book.answered(True) is None


async def test_a_lost_connection_puts_what_was_out_back_in_front_oldest_first():
    book = RequestBook(window=3)
    make(book, 5)
    drain(book)
    book.answered(1)
    book.done(1)
    assert book.connection_lost() == 2
    assert drain(book) == [2, 3, 4]


async def test_a_cancelled_request_is_not_sent_again_but_holds_its_slot_until_its_reply():
    book = RequestBook(window=2)
    requests = make(book, 3)
    assert drain(book) == [1, 2]
    requests[0].future.cancel()
    book.done(1)
    assert drain(book) == []  # the server still counts request 1
    assert book.answered(1) is None
    assert drain(book) == [3]
    assert book.connection_lost() == 2 and drain(book) == [2, 3]


async def test_fail_all_ends_every_waiting_request_with_the_error():
    book = RequestBook()
    requests = make(book, 3)
    drain(book)
    error = ConnectionError("gone")
    book.fail_all(error)
    assert all(r.future.exception() is error for r in requests)
    assert len(book) == 0 and book.next_to_send() is None
