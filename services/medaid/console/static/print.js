// The print view's button (a file, not an inline handler: the console's CSP allows scripts from itself only).
document.getElementById("print-button").addEventListener("click", function () { window.print(); });
