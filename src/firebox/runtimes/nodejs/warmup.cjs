// Required once, then forgotten, by a Node.js stem cell (stem.mjs) before it waits for its
// function: Node compiles its CommonJS loader lazily, on the first require() of a file, and that
// (about 3 ms) would otherwise be paid inside the function's init.
module.exports = {};
