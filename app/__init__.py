"""The Gradio app: one `build_*_tab` per tab, composed by `app.ui.build_app`; services are loaded once."""
