// Model output as Markdown: code blocks stay code, and any HTML in the text is shown as text
// (escaped), never run or rendered; DOMPurify then sanitises what marked made, as a second line.
import { Marked } from "./vendor/marked.esm.js";
import DOMPurify from "./vendor/purify.es.js";

const escapeHtml = (text) =>
  text.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);

const markdown = new Marked({
  gfm: true,
  breaks: true,
  renderer: {
    html(token) {
      return escapeHtml(token.text);
    },
  },
});

export function renderMarkdown(text) {
  return DOMPurify.sanitize(markdown.parse(text), {
    USE_PROFILES: { html: true },
    FORBID_TAGS: ["style", "img", "form", "input", "button"],
  });
}
