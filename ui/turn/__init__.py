"""One chat turn, from the raw values a page sends to the streamed, timed replies.

Every page that asks models something (Chat, Compare, Battle) goes through this package; it
imports no Gradio, so it is tested against the real engine without a browser
(tests/test_turns.py). A turn, room by room:

    text = check_message(ctx, message)                      # checks.py: None = nothing to send
    names = await check_models(ctx, models, several=True)   # Chat: several=False
    params = check_parameters(ctx, system, temperature, top_p, max_tokens)
    histories = parse_histories(raw_histories)              # one per column
    columns = [Column(name, history) for name, history in zip(names, histories)]
    turn = prepare(ctx, text, params, columns, request=request, scope=COMPARE)  # prepare.py
    async for views in stream_turn(ctx, turn):              # stream.py: every column at once
        ...                                                 # ui/view/ draws each ColumnView
    stop_turn(ctx, request, COMPARE)                        # the Stop button (another request)

- checks.py: input checks; each raises `ui.errors.InputRejected` with a message for the user.
- prepare.py: the stream lease, the rate limit (scope.py), each column's fitted prompt.
- stream.py: `reply_batches` lists one reply's stages in order; `stream_turn` merges columns.
- reply.py: `ReplyProgress` turns one reply's events into a `ColumnView` (data, no HTML).
- figures.py: `ReplyFigures`, the one type for what was measured of a reply.
"""
