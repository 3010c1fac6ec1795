// Starts GraphiQL on /graphql (development only). Kept out of the HTML so the page's CSP allows scripts
// from 'self' alone. Adapted from Strawberry's GraphiQL template (MIT): query shared in the URL's ?q=,
// subscriptions over the same path as a WebSocket, a headers editor for `Authorization: Bearer ...`.
(function () {
  "use strict";

  var EXAMPLE_QUERY = [
    "# GraphiQL for Connection Key (development only).",
    "#",
    "# Run a query with Ctrl-Enter or the play button. Most fields need a token:",
    "# put {\"Authorization\": \"Bearer <token>\"} in the Headers tab below.",
    "",
    "{ __typename }",
    "",
  ].join("\n");

  var parameters = {};
  window.location.search
    .slice(1)
    .split("&")
    .forEach(function (entry) {
      var eq = entry.indexOf("=");
      if (eq >= 0) {
        parameters[decodeURIComponent(entry.slice(0, eq))] = decodeURIComponent(entry.slice(eq + 1));
      }
    });

  function updateURL(data) {
    Object.assign(parameters, data);
    var search = Object.keys(parameters)
      .filter(function (key) {
        return Boolean(parameters[key]);
      })
      .map(function (key) {
        return encodeURIComponent(key) + "=" + encodeURIComponent(parameters[key]);
      })
      .join("&");
    history.replaceState(null, null, "?" + search);
  }

  var fetchURL = window.location.href.split("?")[0].split("#")[0];
  var subscriptionURL = new URL(fetchURL);
  subscriptionURL.protocol = subscriptionURL.protocol === "https:" ? "wss:" : "ws:";

  var fetcher = GraphiQL.createFetcher({ url: fetchURL, subscriptionUrl: subscriptionURL.toString() });

  function App() {
    var query = React.useState(parameters.q || EXAMPLE_QUERY);
    var variables = React.useState(parameters.variables);
    return React.createElement(GraphiQL, {
      fetcher: fetcher,
      defaultEditorToolsVisibility: true,
      query: query[0],
      variables: variables[0],
      onEditQuery: function (value) {
        query[1](value);
        updateURL({ q: value });
      },
      onEditVariables: function (value) {
        variables[1](value);
        updateURL({ variables: value });
      },
      inputValueDeprecation: true,
      isHeadersEditorEnabled: true,
      shouldPersistHeaders: true,
    });
  }

  ReactDOM.createRoot(document.getElementById("graphiql")).render(React.createElement(App));
})();
