<!doctype html>
<html lang="en">
<head>
    <meta charset="utf-8">
    <link rel="icon" href="data:,">
    <title>@yield('title') · Operations</title>
    <style>
        body { font: 15px/1.5 system-ui, sans-serif; margin: 2rem auto; max-width: 40rem; }
        [data-status] .status { font-weight: 600; }
        #runwire-error { color: #b00020; }
    </style>
</head>
<body>
@yield('content')
<p id="runwire-error" hidden></p>
@include('runwire.client')
@stack('scripts')
</body>
</html>
