"""The demo's web page: a gradio Blocks app over :class:`pal_mm.demo.Demo` (``pal-mm demo``).

Three tabs: *New user* (answer pairs picked by active querying; the weights, the simplex picture and
the pool's top items update after each answer; "Save my reward model" offers a zip of a one-user
reward model), *Score* (rewards and ranks of several responses or images for chosen users or a
typed mixture) and *Users* (the ``inspect`` view). Every event has an ``api_name``, so
``gradio_client`` can drive the page: ``start``, ``answer_a``, ``answer_b``, ``skip``, ``rank``,
``save``, ``score``. Needs the ``demo`` extra: ``pip install "pal-mm[demo]"``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import PalMMError

INSTALL_HINT = 'the demo needs gradio: pip install "pal-mm[demo]"'


def require_gradio():
    """The gradio module, or a one-line error saying how to install it."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline: no usage reports
    try:
        import gradio
    except ImportError:
        raise PalMMError(INSTALL_HINT) from None
    return gradio


def _theme(gr):
    """The default theme with system fonts (the default one fetches Google Fonts: no network here)."""
    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])


def build_app(demo, title: str = "pal-mm: find your taste", work_dir: str | Path | None = None):
    """A gradio Blocks page for ``demo`` (a :class:`pal_mm.demo.Demo`). ``work_dir``: where exported
    models and pictures are written (default: a new temporary folder)."""
    gr = require_gradio()
    from .demo import show

    work = Path(work_dir or tempfile.mkdtemp(prefix="pal-mm-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    images = demo.kind == "image"
    users_png = work / "users.png"
    users_text = demo.users_report(users_png)
    k = demo.model.config.k

    def guarded(fn):
        def call(*args):
            try:
                return fn(*args)
            except PalMMError as e:
                raise gr.Error(str(e)) from None
            except Exception as e:  # noqa: BLE001  (a page shows one line, never a traceback)
                raise gr.Error(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
        call.__name__ = fn.__name__
        return call

    def summary(view: dict) -> str:
        w, std = view["weights"], view["std"]
        cells = ", ".join(f"prototype {i}: {x:.2f} +- {d:.2f}" for i, (x, d) in enumerate(zip(w, std)))
        lines = [f"**{view['answers']} answer(s)**: your weights {cells}."]
        if view["closest_group"]:
            lines.append(f"Closest group of seen users: **{view['closest_group']}** ("
                         + ", ".join(f"{g}: {d:.2f}" for g, d in view["distance_to_groups"].items()) + " away).")
        if view["pair"] is None:
            lines.append("No pairs left in the pool: save your reward model, or start over.")
        return "  \n".join(lines)

    def top(view: dict, prompt_index):
        index = demo.ranked_prompts.index(prompt_index) if prompt_index in demo.ranked_prompts else 0
        prompt, best = demo.top_items(view["weights"], index, k=4 if images else 5)
        if images:
            return [(str(x), f"#{n + 1}: {r:.2f}") for n, (x, r) in enumerate(best)]
        rows = "\n".join(f"{n + 1}. ({r:.3f}) {show(x, 300)}" for n, (x, r) in enumerate(best))
        return f"**Prompt:** {show(prompt, 300)}\n\n{rows}" if prompt is not None else "(no prompt to rank)"

    def render(s: dict, prompt_index=None):
        view = demo.view(s)
        pair = view["pair"]
        prompt = f"**Prompt:** {show(pair['prompt'], 1500)}" if pair else "**No pairs left.**"
        a, b = (pair["a"], pair["b"]) if pair else (None, None)
        if not images:
            a, b = (show(a, 4000), show(b, 4000)) if pair else ("", "")
        else:
            a, b = (str(a), str(b)) if pair else (None, None)
        return (s, prompt, a, b, summary(view), demo.position_figure(s), top(view, prompt_index), view)

    def start(prompt_index=None):
        return render(demo.start(), prompt_index)

    def answer_a(s, prompt_index=None):
        return render(demo.answer(s, "a"), prompt_index)

    def answer_b(s, prompt_index=None):
        return render(demo.answer(s, "b"), prompt_index)

    def skip(s, prompt_index=None):
        return render(demo.answer(s, "skip"), prompt_index)

    def rank(s, prompt_index=None):
        return top(demo.view(s) if s else {"weights": demo.prior_weights()[0]}, prompt_index)

    def save(s):
        return str(demo.export_zip(s, Path(tempfile.mkdtemp(dir=work))))

    def score(prompt, text, files, users, weights):
        responses = [f if isinstance(f, str) else f.name for f in (files or [])] if images else \
            [line for line in (text or "").splitlines() if line.strip()]
        return demo.score(prompt, responses, list(users or []), weights)

    with gr.Blocks(title=title) as app:
        gr.Markdown(f"# {title}\nA PAL model with K = {k} prototypes and {len(demo.seen_users)} seen users; "
                    f"{len(demo.pairs)} candidate pairs.")
        state = gr.State(None)
        with gr.Tab("New user"):
            prompt_md = gr.Markdown()
            with gr.Row():
                with gr.Column():
                    a_box = gr.Image(label="A", type="filepath", height=260) if images else gr.Textbox(label="A", lines=8)
                    a_btn = gr.Button("I prefer A", variant="primary")
                with gr.Column():
                    b_box = gr.Image(label="B", type="filepath", height=260) if images else gr.Textbox(label="B", lines=8)
                    b_btn = gr.Button("I prefer B", variant="primary")
            with gr.Row():
                skip_btn = gr.Button("Skip this pair")
                restart_btn = gr.Button("Start over")
            summary_md = gr.Markdown()
            with gr.Row():
                with gr.Column():
                    plot = gr.Plot(label="Your place on the simplex", show_label=False)
                    save_btn = gr.Button("Save my reward model")
                    download = gr.File(label="Your reward model (zip)", interactive=False)
                with gr.Column():
                    prompt_dd = gr.Dropdown(demo.ranked_prompts, value=(demo.ranked_prompts or [None])[0],
                                            label="Top items for you, for the prompt")
                    top_out = (gr.Gallery(label="Top items (reward)", columns=4, height=240, preview=False) if images
                               else gr.Markdown())
            with gr.Accordion("Details (JSON)", open=False):
                details = gr.JSON()
        outputs = [state, prompt_md, a_box, b_box, summary_md, plot, top_out, details]
        app.load(guarded(start), [prompt_dd], outputs, api_name="start")
        restart_btn.click(guarded(start), [prompt_dd], outputs, api_visibility="private")
        a_btn.click(guarded(answer_a), [state, prompt_dd], outputs, api_name="answer_a")
        b_btn.click(guarded(answer_b), [state, prompt_dd], outputs, api_name="answer_b")
        skip_btn.click(guarded(skip), [state, prompt_dd], outputs, api_name="skip")
        prompt_dd.change(guarded(rank), [state, prompt_dd], [top_out], api_name="rank")
        save_btn.click(guarded(save), [state], [download], api_name="save")

        with gr.Tab("Score"):
            s_prompt = gr.Textbox(label="Prompt" if not images else "Caption", lines=2)
            s_text = gr.Textbox(label="Responses, one per line", lines=6, visible=not images)
            s_files = gr.File(label="Images", file_count="multiple", file_types=["image"], visible=images)
            with gr.Row():
                s_users = gr.Dropdown(demo.seen_users, multiselect=True, label="Users")
                s_weights = gr.Textbox(label=f"or a mixture: {k} weights, e.g. {', '.join(['%.2g' % (1 / k)] * k)}")
            s_btn = gr.Button("Score", variant="primary")
            s_table = gr.Dataframe(label="Rewards and ranks (1 = best)")
            s_btn.click(guarded(score), [s_prompt, s_text, s_files, s_users, s_weights], [s_table], api_name="score")

        with gr.Tab("Users"):
            gr.Image(str(users_png), label="Seen users' weights (groups coloured)", type="filepath", show_label=False)
            gr.Textbox(users_text, label="inspect", lines=16)
    app.pal_mm_theme = _theme(gr)
    return app


def launch(app, host: str = "127.0.0.1", port: int = 7860, allowed_paths=(), block: bool = True, quiet: bool = False):
    """Serve ``app`` locally (no share link). ``allowed_paths``: folders whose files the page may show
    (the pool's images). ``block`` False returns at once (tests); returns the local URL."""
    try:
        _, url, _ = app.launch(server_name=host, server_port=port, share=False, prevent_thread_lock=not block,
                               allowed_paths=[str(p) for p in allowed_paths], quiet=quiet, theme=app.pal_mm_theme, show_error=True,
                               footer_links=["api", "settings"])
    except OSError as e:
        raise PalMMError(f"cannot serve on {host}:{port} ({e})") from None
    return url
