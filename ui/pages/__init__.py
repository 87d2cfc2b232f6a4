"""The pages: Gradio layout and event wiring, one module per tab. They call the turn pipeline
(ui/turn/) and draw its data with ui/view/; no page imports another."""
