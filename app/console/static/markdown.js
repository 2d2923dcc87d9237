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

// Links in an answer may only be http(s) and open in a new tab, without a referrer: following one
// does not navigate the console away (and lose the session), nor tell the site where it came from.
DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A") {
    const href = node.getAttribute("href") || "";
    if (!/^https?:\/\//i.test(href)) node.removeAttribute("href");
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer");
  }
});

export function renderMarkdown(text) {
  return DOMPurify.sanitize(markdown.parse(text), {
    USE_PROFILES: { html: true },
    FORBID_TAGS: ["style", "img", "form", "input", "button"],
  });
}
